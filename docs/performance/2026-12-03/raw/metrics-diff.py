import sys, re, collections
def load(f):
    d = {}
    for line in open(f):
        k, _, v = line.rstrip().rpartition(" ")
        try: d[k] = float(v)
        except ValueError: pass
    return d
a, b = load(sys.argv[1]), load(sys.argv[2])
rows = []
for k in b:
    dv = b[k] - a.get(k, 0)
    if dv and ("pods" in k or "jobs" in k or 'kind="Pod"' in k or 'kind="Job"' in k or "Event" in k or "events" in k or "leases" in k or "Lease" in k or "jobbatch" in k.lower()):
        rows.append((k, dv))
for k, dv in sorted(rows):
    print(f"{dv:14.0f} {k}")
