"""How long `vonenet-brainscore --help` and `VERB --help` take (target: 1 s each), median of 5 runs.

    .venv/bin/python benchmarks/cli_start.py
"""
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, '-m', 'vonenet_brainscore.cli']
VERBS = ['', 'models', 'info', 'classify', 'score', 'map-layers', 'plugin', 'submission', 'validate', 'train',
         'robustness']


def cpu_model() -> str:
    for line in Path('/proc/cpuinfo').read_text().splitlines() if Path('/proc/cpuinfo').exists() else []:
        if line.startswith('model name'):
            return line.split(':', 1)[1].strip()
    return platform.processor() or platform.machine()


def seconds(argv) -> float:
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


if __name__ == '__main__':
    print(f'CPU: {cpu_model()}; Python {platform.python_version()}')
    worst = 0.0
    for verb in VERBS:
        took = seconds(CLI + ([verb] if verb else []) + ['--help'])
        worst = max(worst, took)
        print(f"{('vonenet-brainscore ' + verb).strip():32s} --help  {took:.3f} s")
    print(f'slowest: {worst:.3f} s (target 1 s): {"met" if worst <= 1 else "MISSED"}')
