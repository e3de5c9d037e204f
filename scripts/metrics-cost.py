#!/usr/bin/env python3
"""What serving Prometheus metrics costs midge: starts target/release/midge with
`metrics_listener` on free loopback ports, scrapes /metrics N times as fast as it answers,
and reads the CPU time of the broker's metrics thread from /proc (per thread), then its CPU
while idle for 10 seconds. The shards' own share (a loop-turn histogram: one clock read
and two stores per turn) is measured with `scripts/compare.sh --pair midge-base midge`.

    python3 scripts/metrics-cost.py [--scrapes N]
"""
import argparse, os, socket, subprocess, sys, tempfile, time, urllib.request

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port

def thread_cpu(pid, name):
    for tid in os.listdir(f"/proc/{pid}/task"):
        if open(f"/proc/{pid}/task/{tid}/comm").read().strip() == name:
            fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    sys.exit(f"no thread {name} in {pid}")

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scrapes", type=int, default=2000)
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    metrics, mqtt = free_port(), free_port()
    conf = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
    conf.write(f"user root\nlistener {mqtt} 127.0.0.1\nmetrics_listener 127.0.0.1:{metrics}\n")
    conf.close()
    broker = subprocess.Popen([os.path.join(root, "target/release/midge"), "-c", conf.name],
                              stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{metrics}/metrics"
        for _ in range(500):
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                time.sleep(0.01)
        before = thread_cpu(broker.pid, "midge-metrics")
        started = time.time()
        size = 0
        for _ in range(args.scrapes):
            size = len(urllib.request.urlopen(url, timeout=2).read())
        elapsed = time.time() - started
        after = thread_cpu(broker.pid, "midge-metrics")
        print(f"{args.scrapes} scrapes in {elapsed:.2f} s ({size} bytes each): "
              f"metrics thread CPU {after - before:.3f} s, {1000 * (after - before) / args.scrapes:.3f} ms per scrape")
        time.sleep(10)
        idle = thread_cpu(broker.pid, "midge-metrics")
        print(f"idle for 10 s: metrics thread CPU {idle - after:.3f} s")
    finally:
        broker.terminate()
        broker.wait()
        os.unlink(conf.name)

if __name__ == "__main__":
    main()
