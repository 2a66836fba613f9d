import os, statistics, sys, time
import numpy as np
from privinfer import zoo
from privinfer.planner import ss_cost
from privinfer.session import PrivateSession
for rep in range(2):
  for name in sys.argv[1:]:
    g = zoo.load_model(name)
    t=time.time(); rows = ss_cost.count_pieces(g); tc=time.time()-t
    whole = next(p["s"] for p in rows if tuple(p["piece"]) == (0, len(g)))
    chain = sum(p["s"] for p in rows if p["piece"][1]-p["piece"][0]==1)
    X,_ = zoo.load_dataset(name,"test")
    on=[]
    with PrivateSession(g,"ss",warn=False) as s:
        for i in range(21):
            s.infer(X[i:i+1])
            if i: on.append(s.stats.last.online_s)
    print(f"{name}: counted whole {whole*1e3:.1f} ms, chain {chain*1e3:.1f}, floor {rows[0].get('floor_s',0)*1e3:.2f}; real online median {statistics.median(on)*1e3:.1f} (p25 {np.percentile(on,25)*1e3:.1f} p75 {np.percentile(on,75)*1e3:.1f}) count took {tc:.0f}s  load {os.getloadavg()[0]:.2f}", flush=True)
