import os, subprocess, sys, time, shutil
from tests.support.plan import CP, WORKER, run_pyinfra

def test_prof(cluster):
    inv = cluster.inventory(cluster.converged(CP), cluster.converged(WORKER))
    shutil.copy(inv, "/work/tmp/prof-inv.py")
    run = run_pyinfra(inv, "-y")
    assert run.returncode == 0, run.stderr[-3000:]
    env = dict(os.environ, PYINFRA_FAKE_DELAY="0", PYINFRA_FAKE_DELAY_JITTER="0", PYINFRA_PROGRESS="off")
    for what in (["exec", "--", "true"], ["deploy.py"]):
        ts = []
        for _ in range(3):
            t = time.time()
            subprocess.run([sys.executable, "-m", "pyinfra", "-y", str(inv), *what], env=env, capture_output=True)
            ts.append(time.time() - t)
        print(what, [round(x, 2) for x in ts])
    subprocess.run([sys.executable, "-m", "cProfile", "-o", "/work/tmp/prof.out", "-m", "pyinfra", "-y", str(inv), "deploy.py"], env=env, capture_output=True)
