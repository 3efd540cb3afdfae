import re,subprocess,collections,sys
f=sys.argv[1]; n=int(sys.argv[2])
counts=collections.defaultdict(lambda: collections.Counter())
ob=None; fn=None; skip=False
fnby={}
for line in open(f):
    if line.startswith('ob='): ob=line[3:].strip(); continue
    if line.startswith('fn='): fn=line[3:].strip(); continue
    if line.startswith('calls='): skip=True; continue
    if line.startswith('0x'):
        if skip: skip=False; continue
        p=line.split()
        a=int(p[0],16); c=int(p[2]) if len(p)>2 else 0
        counts[ob][a]+=c
        fnby[(ob,a)]=fn
    else:
        skip=False if not line.startswith('calls=') else skip
tot=0; byfn=collections.Counter()
for ob,ctr in counts.items():
    try: d=subprocess.run(['objdump','-d','--no-show-raw-insn',ob],capture_output=True,text=True).stdout
    except Exception as e: continue
    for l in d.splitlines():
        m=re.match(r'\s*([0-9a-f]+):\s+(.*)$',l)
        if not m: continue
        ins=m.group(2)
        if ins.startswith('lock ') or (ins.startswith('xchg') and '(' in ins):
            a=int(m.group(1),16)
            if a in ctr:
                tot+=ctr[a]; byfn[(fnby.get((ob,a)) or '?')[:110]]+=ctr[a]
print(f"locked instructions executed: {tot:,} ({tot/n:.2f} per submit)")
for k,v in byfn.most_common(20): print(f"{v/n:6.2f} {k}")
