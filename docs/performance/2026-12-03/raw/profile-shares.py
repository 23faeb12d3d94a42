import sys, collections
incl = collections.Counter(); leaf = collections.Counter(); total = busy = 0
IDLE = ("select (", "EpollSelector.select", "_PollLikeSelector.select", "Condition.wait", "Event.wait", "_wait_for_tstate_lock", "poll (")
def fn(f):
    if " (" not in f: return f
    name, rest = f.split(" (", 1)
    return name + " (" + rest.split(":")[0] + ")"
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    n = int(n); total += n
    frames = stack.split(";")
    if any(i in frames[-1] for i in IDLE): continue
    busy += n
    seen = set()
    for f in frames:
        k = fn(f)
        if k not in seen: incl[k] += n; seen.add(k)
    leaf[fn(frames[-1])] += n
print("samples", total, "busy", busy)
skip = ("_run_module", "_run_code", "<module>", "main (cli", "run (runtime", "run (asyncio", "Runner.run", "BaseEventLoop", "Handle._run", "Thread.", "_bootstrap")
for k, v in incl.most_common(80):
    if k.startswith(skip): continue
    print(f"{v/busy*100:5.1f}% {k}")
