import subprocess, sys, statistics
from privinfer import netem
from privinfer.transport.ports import free_port
res=[]
for k in range(int(sys.argv[1]) if len(sys.argv)>1 else 3):
    port=free_port('127.0.0.1')
    r0=subprocess.Popen([sys.executable,"-c",netem.GLOO,"0","127.0.0.1",str(port),"200","lo"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
    r1=subprocess.run([sys.executable,"-c",netem.GLOO,"1","127.0.0.1",str(port),"200","lo"],capture_output=True,text=True,timeout=120)
    r0.wait()
    res.append(1e3*float(r1.stdout.strip().splitlines()[-1])/200)
print("gloo loopback ping-pong ms:", [round(x,3) for x in res])
