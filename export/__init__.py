"""Deployment: self-contained bundles checked against torch, quantized CPU graphs, TensorRT engines, and the
many-players benchmark (docs/deployment.md).

- `export.bundle`: `export_bundle(world_dir, out, kind="onnx"|"tensorrt", quantize="none"|"int8")`
- `export.parity`: replay a torch rollout's network calls on exported graphs; ParityError on failure
- `export.quantize`: int8 dynamic quantization of the DiT graph and the measurements behind its default
- `export.tensorrt`: strongly typed engines, static shapes, timing and engine caches
- `export.bench_sessions`: `worldsim bench --sessions` under its old name (the code is engine/bench_sessions.py)
- `export.cli`: `worldsim export`

Reading a bundle is the engine's job (`engine.bundle`, `World.load(bundle_dir)`): imports flow
worldsim <- engine <- export.
"""
