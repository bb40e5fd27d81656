"""Running bench/bench_gpu.py on a lent GPU machine: bench/gpu/README.md."""
