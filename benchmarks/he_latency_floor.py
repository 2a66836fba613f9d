"""Where a channel-packed latency query's time goes, op by op, and what the helper process buys (issue 13).

    python benchmarks/he_latency_floor.py [--model minionn-mnist-he] [--images 6] [--out floor.json]

1. SEAL op costs per level at the model's parameters (min of 5 repetitions: the least-loaded figure):
   rotation (key switch), mul_plain, add, rescale, square + relinearization.
2. The plan's op counts per step and level (a counting backend), priced with (1): the serial floor, and the
   floor with no rotations at all (what products and squares alone cost); and the two-core floor, a bound for
   any schedule of the plan on two cores with free moves between them (`two_core_floor`).
3. Paired, in-process: each image evaluated serially and with the helper's share (`latency_par`, forced on),
   alternating the order. Wall times, and a load-independent projection for an idle 2-core machine: the
   parent's CPU outside the split steps plus, per split step, the slower side's CPU (parent thread or helper
   process). The machine's load average is recorded: on a shared machine the wall times are orientation only.
4. Per item of the compiled plan, the serial CPU (thread time; the item's rescale and bias included), and per
   split step the parent's and the helper's CPU: where the split gains little, and what stays serial.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tenseal.sealapi as seal  # noqa: E402

from privinfer import zoo  # noqa: E402
from privinfer.protocols.he import HE, _KeyedContext, batch_helper, latency_par, seeded  # noqa: E402
from privinfer.protocols.he.context import CKKSContext  # noqa: E402
from privinfer.protocols.he.latency import NumpyBackend, SealBackend, client_vectors  # noqa: E402

OPS = ("rotate", "mul_plain", "add", "rescale", "square")


def op_costs(ctx) -> dict:
    """ms per op at each level (number of data primes), min of 5 repetitions."""
    ev, S = ctx.evaluator, ctx.slots
    ct = seal.Ciphertext()
    ctx.encryptor.encrypt(ctx.encode(np.ones(S), 2.0 ** 20, 0), ct)
    out, res = {}, collections.defaultdict(list)
    for _ in range(5):
        c = seal.Ciphertext()
        ev.negate(ct, c)
        level = 0
        while True:
            pt = ctx.encode(np.ones(S), 2.0 ** 8, level)
            acc = seal.Ciphertext()
            ev.add(c, c, acc)
            tmp = seal.Ciphertext()
            runs = {"rotate": (lambda: ev.rotate_vector(c, 1, ctx.galois_keys, seal.Ciphertext()), 5),
                    "mul_plain": (lambda: ev.multiply_plain(c, pt, seal.Ciphertext()), 20),
                    "add": (lambda: ev.add_inplace(acc, c), 20),
                    "square": (lambda: (ev.square(c, tmp), ev.relinearize_inplace(tmp, ctx.relin_keys)), 3)}
            if c.coeff_modulus_size() > 1:
                runs["rescale"] = (lambda: ev.rescale_to_next(c, seal.Ciphertext()), 5)
            for name, (f, k) in runs.items():
                t = time.perf_counter()
                for _ in range(k):
                    f()
                res[(c.coeff_modulus_size(), name)].append((time.perf_counter() - t) / k * 1e3)
            if c.coeff_modulus_size() == 1:
                break
            ev.mod_switch_to_next_inplace(c)
            level += 1
    for (n, name), v in res.items():
        out.setdefault(n, {})[name] = min(v)
    return out


class _Counting(NumpyBackend):
    """Counts ops by the data primes left (one level per segment): a value is that number, rescales lower it."""

    def __init__(self, slots):
        super().__init__(slots)
        self.count = collections.Counter()

    def encode(self, values, scale, level):
        return None

    def _n(self, name, x, k=1):
        self.count[(x, name)] += k
        return x

    def mul_plain(self, ct, pt):
        return self._n("mul_plain", ct)

    def add(self, a, b):
        return self._n("add", a)

    def add_plain(self, ct, pt):
        return ct

    def rotate(self, ct, k):
        return self._n("rotate", ct)

    def rescale(self, ct):
        self._n("rescale", ct)
        return ct - 1

    def mod_switch(self, ct):
        return ct - 1

    def square(self, ct):
        return self._n("square", ct)

    def multiply(self, a, b):
        return self._n("square", a)


def _step_shape(item, plan):
    """(baby rotations, the step's dependency chain, giant rotations, fold rotations per output, outputs,
    products) of a linear item, in rotations as `convpack_eval.rot_partials` (or a dense diagonal step through its
    `RotStep` view) runs them. A step without a Galois key of its own counts as the keyed rotations that compose
    it (`plan.key_paths`). The chain: a term (o, c, g, b) waits for its baby (the rotations on b's path from the
    input), then its product's sum passes through |g| giant rotations of its output's Horner chain (positive and
    negative giants are two chains, independent of each other), so the step's chain is the largest baby depth +
    giant distance over its terms, then the fold. None for a non-linear item."""
    st = item.step
    if item.kind == "diag":
        st = latency_par.diag_view(item.step, plan.slots)
        if st is None:
            return None
    elif item.kind != "rot":
        return None

    def cost(step):
        return len(plan.key_paths.get(int(step), [step]))
    up, down = cost(st.n1), cost(plan.slots - st.n1)
    babies, depth = 0, {}
    for c in range(st.n_in):
        link = {b: (p, cost(k)) for b, p, k in st.baby_chain(c)}
        counted = set()
        for b in {int(b) for b in st.keys[st.keys[:, 1] == c, 3]} - {0}:
            d, x = 0, b
            while x != 0:
                prev, k = link[x]
                if x not in counted:
                    counted.add(x)
                    babies += k
                x, d = prev, d + k
            depth[(c, b)] = d
    chain = max(depth.get((int(c), int(b)), 0) + (int(g) * up if g > 0 else -int(g) * down)
                for _, c, g, b in st.keys)
    giants = 0
    for o in range(st.n_out):
        lo, hi = st.giants(o)
        giants += hi * up - lo * down
    fold = sum(cost(f) for f in (item.step.fold or ()))
    return babies, chain, giants, fold, st.n_out, len(st.keys)


def two_core_floor(comp, costs: dict, levels: list, serial_ms: float) -> dict:
    """A lower bound for one image on two cores at these op costs, whatever the schedule and with free moves
    between the cores: per linear step, the larger of its work / 2 and its dependency chain (`_step_shape`:
    baby depth plus giant distance over its terms, then the fold; each rotation waits for the one before, products
    and additions are left out of the chain); the rest of the query
    (squares, rescales, bias, gathers) at half its serial cost. It adds the steps up, so it assumes each step
    waits for its whole input: true of minionn-mnist-he (conv2 sums conv1's four outputs before its babies, the
    dense steps have one input), not of every plan. Why: it says how far any two-core schedule of this plan could
    go, apart from how well `latency_par` splits it (issue 13's 0.5 s target)."""
    lin_work = lin_floor = 0.0
    steps = []
    for idx, item in enumerate(comp.items):
        shape = _step_shape(item, comp.plan)
        if shape is None:
            continue
        babies, chain_rot, giants, fold, n_out, prods = shape
        c = costs[levels[idx]]
        rot, mul = c["rotate"], c["mul_plain"] + c["add"]
        work = (babies + giants + fold * n_out) * rot + prods * mul
        chain = (chain_rot + fold) * rot
        lin_work += work
        lin_floor += max(chain, work / 2)
        steps.append({"item": f"{idx}:{item.kind}", "primes": levels[idx], "baby_rotations": babies,
                      "giant_rotations": giants, "chain_rotations": chain_rot + fold, "fold": fold,
                      "products": prods, "work_ms": work, "chain_ms": chain})
    rest = max(0.0, serial_ms - lin_work)
    return {"steps": steps, "linear_floor_ms": lin_floor, "rest_ms": rest, "floor_ms": lin_floor + rest / 2}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minionn-mnist-he")
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--out")
    a = p.parse_args()
    g = zoo.load_model(a.model)
    proto = HE(g, circuit_privacy="fast")
    params, plan, comp = proto.latency_params, proto.plan, proto.compiled
    cctx = CKKSContext.create(params, plan.rotation_steps)
    blobs = cctx.public_blobs()
    sctx = _KeyedContext(proto.ctx)
    sctx.load_public(blobs, plan.rotation_steps)
    costs = op_costs(sctx)
    top = len(params.coeff_mod_bit_sizes) - 1
    be = _Counting(plan.slots)
    levels = []  # the data primes each item starts at (the counting backend's values are those counts)
    comp.evaluate([top] * plan.input.n_ct, backend=be, trace=levels)
    rows, floor, no_rot = [], 0.0, 0.0
    for (n, name), k in sorted(be.count.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        ms = k * costs[n][name]
        floor += ms
        no_rot += 0 if name == "rotate" else ms
        rows.append({"primes": n, "op": name, "count": k, "ms_each": costs[n][name], "ms": ms})
        print(f"primes {n} {name:9s} {k:4d} x {costs[n][name]:6.2f} ms = {ms:7.1f} ms")
    print(f"serial floor {floor:.0f} ms per image; without any rotation {no_rot:.0f} ms")
    levels = [top] + [x if isinstance(x, int) else max(x) for x in levels]
    floor2 = two_core_floor(comp, costs, levels, floor)
    for st in floor2["steps"]:
        print(f"two cores: item {st['item']:7s} at {st['primes']} primes: {st['baby_rotations']} baby and "
              f"{st['giant_rotations']} giant rotations, fold {st['fold']}, {st['products']} products, a chain of "
              f"{st['chain_rotations']} rotations: work "
              f"{st['work_ms']:.0f} ms, dependency chain {st['chain_ms']:.0f} ms")
    print(f"two-core floor (any schedule, free moves) {floor2['floor_ms']:.0f} ms per image "
          f"(linear steps {floor2['linear_floor_ms']:.0f} ms, the rest {floor2['rest_ms']:.0f} ms at half)")
    # paired: serial vs helper share
    latency_par.core_is_free = lambda: True
    par = latency_par.ParSession(comp, sctx, blobs, background=False)
    rec = []
    run_rot = par.run_rot

    def timed(be, idx, *args):
        t0, h0 = time.thread_time(), batch_helper._helper.cpu_seconds()
        r = run_rot(be, idx, *args)
        rec.append((time.thread_time() - t0, batch_helper._helper.cpu_seconds() - h0, idx))
        return r
    par.run_rot = timed
    X, _ = zoo.load_dataset(a.model, "test")
    enc = seeded.SeededEncryptor(cctx.seal, cctx.secret_key, cctx.encoder)
    walls, cpu_serial, proj = collections.defaultdict(list), [], []
    per_item, per_split, alone = collections.defaultdict(list), collections.defaultdict(list), []

    class _Clock(list):  # `evaluate(trace=...)` appends once per item: the thread CPU at each item's end
        def append(self, _):
            super().append(time.thread_time())
    for i in range(a.images):
        up = [enc.encrypt(v, 2.0 ** params.input_scale_bits) for v in client_vectors(plan, X[i].reshape(g.input_shape))]
        for mode in (("serial", "helper") if i % 2 == 0 else ("helper", "serial")):
            cts = [seeded.load(sctx.seal, b, n_primes=top, scale=2.0 ** params.input_scale_bits) for b in up]
            rec.clear()
            clock = _Clock()
            t0, w0 = time.thread_time(), time.perf_counter()
            comp.evaluate(cts, backend=SealBackend(sctx), par=par if mode == "helper" else None, trace=clock)
            cpu = time.thread_time() - t0
            walls[mode].append(time.perf_counter() - w0)
            if mode == "serial":
                cpu_serial.append(cpu)
                for k, (start, end) in enumerate(zip([t0] + clock[:-1], clock)):
                    per_item[f"{k}:{comp.items[k].kind}"].append(end - start)
            else:
                proj.append(cpu - sum(r[0] for r in rec) + sum(max(r[:2]) for r in rec))
                alone.append(cpu - sum(r[0] for r in rec))
                for parent, helper, idx in rec:
                    per_split[idx].append((parent, helper))
    # where the serial CPU goes (item: its ops, its rescale and bias), and each split step's two sides
    items = {k: float(np.median(v)) for k, v in per_item.items()}
    splits = {f"{i}:{comp.items[i].kind}": {"parent_cpu_s": float(np.median([p for p, _ in v])),
                                            "helper_cpu_s": float(np.median([h for _, h in v])),
                                            "serial_cpu_s": items.get(f"{i}:{comp.items[i].kind}")}
              for i, v in sorted(per_split.items())}
    outside = float(np.median(alone))  # the parent alone: other items, and the split items' folds and rescales
    for k, v in items.items():
        print(f"serial item {k:8s} {v * 1e3:6.0f} ms CPU")
    for k, v in splits.items():
        print(f"split  item {k:8s} parent {v['parent_cpu_s'] * 1e3:4.0f} ms, helper {v['helper_cpu_s'] * 1e3:4.0f} ms CPU")
    print(f"the parent alone (helper mode: not in a shared step's terms): {outside * 1e3:.0f} ms CPU")
    rec_out = {"model": a.model, "params": params.describe(), "load_avg": os.getloadavg(), "op_ms": costs,
               "ops": rows, "serial_floor_ms": floor, "floor_without_rotations_ms": no_rot,
               "two_core_floor_ms": floor2["floor_ms"], "two_core_floor": floor2,
               "wall_serial_s": float(np.median(walls["serial"])), "wall_helper_s": float(np.median(walls["helper"])),
               "cpu_serial_s": float(np.median(cpu_serial)), "projected_idle_helper_s": float(np.median(proj)),
               "helper_steps_used": par.used, "images": a.images, "serial_item_cpu_s": items, "split_steps": splits,
               "cpu_parent_alone_s": outside}
    print(json.dumps({k: v for k, v in rec_out.items() if k not in ("ops", "op_ms", "serial_item_cpu_s", "split_steps")},
                     indent=1))
    par.close()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rec_out, f, indent=1)


if __name__ == "__main__":
    main()
