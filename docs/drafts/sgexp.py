"""Scratch experiment (not committed): OVS 3.1 features the security-group design needs."""
import time, sys
from ovsnat.lab import Lab
from ovsnat.lab.sh import run

lab = Lab().up()
try:
    h = lab.add_host("hv1")
    a = lab.add_vm("a", "hv1", "10.0.0.5", "02:00:0a:00:00:05", {}, boot=False)
    b = lab.add_vm("b", "hv1", "10.0.0.6", "02:00:0a:00:00:06", {}, boot=False)
    pa, pb = h.ofport(a.tap), h.ofport(b.tap)
    print("ports", pa, pb)
    flows = f"""
table=0,priority=100,arp actions=NORMAL
table=0,priority=100,ip,in_port={pa} actions=load:0x7->NXM_NX_REG9[],load:{pa}->NXM_NX_REG11[],load:0x11->NXM_NX_REG10[],goto_table:16
table=0,priority=100,ip,in_port={pb} actions=load:0x8->NXM_NX_REG9[],load:{pb}->NXM_NX_REG11[],load:0x12->NXM_NX_REG10[],goto_table:16
table=16,priority=100,ip actions=ct(table=17,zone=NXM_NX_REG10[0..15])
table=17,priority=200,ct_state=+inv+trk,ip actions=drop
table=17,priority=150,ct_state=+est+trk,ip actions=goto_table:70
table=17,priority=150,ct_state=+rel+trk,ip actions=goto_table:70
table=17,priority=100,ct_state=+new+trk,ip,reg9=0x7 actions=ct(commit,zone=NXM_NX_REG10[0..15]),goto_table:70
table=17,priority=100,ct_state=+new+trk,ip,reg9=0x8 actions=ct(commit,zone=NXM_NX_REG10[0..15]),goto_table:70
table=70,priority=100,ip,nw_dst=10.0.0.5 actions=load:{pa}->NXM_NX_REG11[],load:0x11->NXM_NX_REG10[],load:0x7->NXM_NX_REG9[],goto_table:71
table=70,priority=100,ip,nw_dst=10.0.0.6 actions=load:{pb}->NXM_NX_REG11[],load:0x12->NXM_NX_REG10[],load:0x8->NXM_NX_REG9[],goto_table:71
table=71,priority=100,ip actions=ct_clear,ct(table=72,zone=NXM_NX_REG10[0..15])
table=72,priority=200,ct_state=+inv+trk,ip actions=drop
table=72,priority=150,ct_state=+est+trk,ip actions=output:NXM_NX_REG11[0..15]
table=72,priority=150,ct_state=+rel+trk,ip actions=output:NXM_NX_REG11[0..15]
table=72,priority=100,ct_state=+new+trk,tcp,reg9=0x8,tp_dst=22 actions=conjunction(5,1/2)
table=72,priority=100,ct_state=+new+trk,ip,nw_src=10.0.0.5 actions=conjunction(5,2/2)
table=72,priority=100,conj_id=5,ip actions=ct(commit,zone=NXM_NX_REG10[0..15]),output:NXM_NX_REG11[0..15]
table=72,priority=100,ct_state=+new+trk,icmp,reg9=0x8 actions=ct(commit,zone=NXM_NX_REG10[0..15]),output:NXM_NX_REG11[0..15]
table=72,priority=100,ct_state=+new+trk,icmp,reg9=0x7 actions=ct(commit,zone=NXM_NX_REG10[0..15]),output:NXM_NX_REG11[0..15]
"""
    h.ofctl("del-flows", "br-int")
    h.install_flows(flows)
    print(h.ofctl("dump-flows", "br-int", "table=72"))
    print(run(["ip", "netns", "exec", a.ns, "ping", "-c", "2", "-W", "1", "10.0.0.6"], check=False).stdout[-120:])
    # b listens on 22 and 23
    lab.spawn("s22", ["ip","netns","exec",b.ns,"python3","-c","import socket,time\ns=socket.socket();s.setsockopt(1,2,1);s.bind(('0.0.0.0',22));s.listen();c,_=s.accept()\nwhile True:\n d=c.recv(100)\n if not d: break\n c.send(d)"])
    lab.spawn("s23", ["ip","netns","exec",b.ns,"python3","-c","import socket\ns=socket.socket();s.setsockopt(1,2,1);s.bind(('0.0.0.0',23));s.listen();c,_=s.accept();c.send(b'x')"])
    time.sleep(0.5)
    cl = r"""
import socket,sys,time
s=socket.create_connection(('10.0.0.6',int(sys.argv[1])),timeout=2)
for i in range(int(sys.argv[2])):
    s.send(b'ping'); print('got', s.recv(10)); time.sleep(0.5)
"""
    print("23:", run(["ip","netns","exec",a.ns,"python3","-c",cl,"23","1"], check=False).stderr[-100:])
    import subprocess
    p = subprocess.Popen(["ip","netns","exec",a.ns,"python3","-c",cl,"22","8"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.2)
    print("ct before:", h.appctl("dpctl/dump-conntrack", "zone=18"))
    out = h.ofctl("ct-flush", "br-int", "zone=18", "ct_nw_proto=6,ct_tp_dst=22", check=False)
    print("flush:", out)
    print("ct after:", h.appctl("dpctl/dump-conntrack", "zone=18"))
    # now remove the rule: delete conj flows, then flush
    h.ofctl("del-flows", "br-int", "table=72,conj_id=5", check=False)
    h.ofctl("--strict", "del-flows", "br-int", "table=72,priority=100,ct_state=+new+trk,tcp,reg9=0x8,tp_dst=22", check=False)
    h.ofctl("ct-flush", "br-int", "zone=18", "ct_nw_proto=6,ct_tp_dst=22", check=False)
    print(p.communicate(timeout=20)[0][-400:])
finally:
    lab.down()
