"""Benchmark tooling, apart from the training package: `python -m bridgegap_jax.bench` (cli.py).

    cli.py              the command: arguments, default rows and targets, --tiny, the run
    rows.py             a row (variant, result), the synthetic batch, the timing loop
    jax_rows.py         a JAX row in its child process: training step, eval, profile; the matmul peak
    torch_rows.py       a PyTorch row in its child process
    torch_reference.py  the PyTorch reference step (also the parity tests' reference)
    runner.py           one child process per row, with timeouts and the time budget
    tables.py           the table, the pairings and the targets (MET / NOT MET / NOT MEASURED)
    flops.py            analytic model FLOPs

Training never imports this package.
"""
