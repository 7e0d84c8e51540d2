"""Does a second Ray actor double the rate of a fixed torch workload (Conv3d, 1 thread) on 2 cores? Prints the
seconds of 30 passes alone, in two local processes, in one actor and in each of two actors, and the actors' niceness.

Usage: python benchmarks/probe_ray_actors.py
"""

import multiprocessing as mp
import os
import time

import ray


def work(n=30):
    import torch

    torch.set_num_threads(1)
    net = torch.nn.Conv3d(8, 8, 3, padding=1)
    x = torch.randn(1, 8, 48, 48, 48)
    with torch.no_grad():
        net(x)
        t = time.perf_counter()
        for _ in range(n):
            net(x)
        return time.perf_counter() - t


class A:
    def run(self, n):
        return work(n), os.getpid(), os.nice(0)


if __name__ == "__main__":
    print("alone in this process:", round(work(), 2))
    with mp.get_context("spawn").Pool(2) as p:
        print("2 local processes:", [round(v, 2) for v in p.map(work, [30, 30])])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    R = ray.remote(num_cpus=1)(A)
    a = [R.remote() for _ in range(2)]
    ray.get([x.run.remote(1) for x in a])
    print("1 actor:", ray.get(a[0].run.remote(30)))
    print("2 actors:", ray.get([x.run.remote(30) for x in a]))
