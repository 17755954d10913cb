"""Few-step consistency models against their teacher's samplers, on one frontier.

Evaluates a diffusion teacher with DDIM and DPM-Solver++ 2M at several NFE and its
consistency students (CD, ECT, iCT, ...) with multistep consistency sampling ('cm') at
1, 2 and 4 steps, every point at several sampling seeds, all with the teacher's
evaluation classifier (the same features, so the FIDs compare). Writes, to --out:

* ``rows.csv`` / ``rows.json``: one row per (model, sampler, NFE, seed), every metric
  (``--include rows.json`` adds an earlier run's rows, e.g. a student trained later);
* ``table.md``: mean and standard deviation over the seeds per point;
* ``pareto_nfe.png`` / ``pareto_seconds.png``: the seed-mean FID against NFE and
  against seconds per image, the Pareto-optimal points marked.

Usage (digits; the workdirs as experiments/results/consistency_digits/README.md makes
them)::

  python experiments/consistency_frontier.py --teacher workdirs/digits \\
      --students cd=workdirs/digits_cd,ect=workdirs/digits_ect,ict=workdirs/digits_ict \\
      --num-samples 500 --seeds 0,1,2 --out experiments/results/consistency_digits
"""

import argparse
import csv
import json
import os
import shutil
import time

import numpy as np

from diffjax.app.evaluate import load_evaluation_context, run_pareto_sweep
from diffjax.app.reports import plot_quality_vs_nfe, plot_quality_vs_seconds
from diffjax.metrics.pareto import mark_pareto

METRICS = ("fid", "class_agreement", "precision", "recall", "seconds_per_image")


def share_classifier(teacher: str, student: str) -> None:
    """Copies the teacher's evaluation classifier into the student's workdir (same features)."""
    src = os.path.join(teacher, "eval")
    dst = os.path.join(student, "eval")
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name.endswith("_classifier.msgpack") and not os.path.exists(os.path.join(dst, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def evaluate_model(name, workdir, samplers, nfes, seeds, num_samples, out, guidance):
    ctx = load_evaluation_context(workdir)
    rows = []
    for seed in seeds:
        for row in run_pareto_sweep(
            ctx, samplers=samplers, nfes=nfes, guidance_scales=[guidance],
            num_samples=num_samples, out_dir=os.path.join(out, "points", f"{name}_seed{seed}"),
            seed=seed, progress=False,
        ):
            rows.append({"model": name, "seed": seed, **row})
    return rows


def aggregate(rows):
    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["sampler"], r["nfe"]), []).append(r)
    out = []
    for (model, sampler, nfe), group in groups.items():
        agg = {"model": model, "sampler": f"{model} {sampler}", "nfe": nfe,
               "nfe_target": group[0]["nfe_target"], "num_steps": group[0]["num_steps"],
               "seeds": len(group)}
        for m in METRICS:
            values = np.asarray([float(g[m]) for g in group], np.float64)
            agg[m] = float(values.mean())
            agg[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        out.append(agg)
    mark_pareto(out)
    return sorted(out, key=lambda r: (r["nfe"], r["fid"]))


def table(agg, label):
    lines = [
        f"| model | sampler | NFE | steps | {label} (mean +- sd over seeds) | class agreement "
        "| precision | recall | ms / image | Pareto (NFE, s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in agg:
        marks = ("NFE " if r["pareto_nfe"] else "") + ("s" if r["pareto_seconds"] else "")
        lines.append(
            f"| {r['model']} | {r['sampler'].split(' ', 1)[1]} | {r['nfe']} | {r['num_steps']} | "
            f"{r['fid']:.2f} +- {r['fid_std']:.2f} | {r['class_agreement']:.1%} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | {1e3 * r['seconds_per_image']:.2f} | "
            f"{marks.strip() or '-'} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--students", default="",
                        help="name=workdir,name=workdir,... (none: the teacher's rows only)")
    parser.add_argument("--teacher-samplers", default="ddim,dpm++2m")
    parser.add_argument("--teacher-nfe", default="5,10,20,50")
    parser.add_argument("--student-nfe", default="1,2,4")
    parser.add_argument("--student-samplers", default="cm",
                        help="e.g. cm,cm@1.5 (the 2-step level after '@')")
    parser.add_argument("--guidance", type=float, default=None,
                        help="guidance scale of every point (default: none, the conditional model)")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", required=True)
    parser.add_argument("--include", default=None,
                        help="rows.json of an earlier run whose models join the table")
    parser.add_argument("--skip-teacher", action="store_true",
                        help="evaluate only the students (the teacher's rows from --include)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    students = dict(item.split("=", 1) for item in args.students.split(",") if item)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    rows = []
    if args.include:
        with open(args.include) as f:
            rows += json.load(f)
    if not args.skip_teacher:
        rows += evaluate_model(
            "teacher", args.teacher, args.teacher_samplers.split(","),
            [int(n) for n in args.teacher_nfe.split(",")], seeds, args.num_samples, args.out,
            args.guidance,
        )
    for name, workdir in students.items():
        share_classifier(args.teacher, workdir)
        rows += evaluate_model(
            name, workdir, args.student_samplers.split(","),
            [int(n) for n in args.student_nfe.split(",")], seeds,
            args.num_samples, args.out, args.guidance,
        )
    keys = ["model", "seed", *[k for k in rows[0] if k not in ("model", "seed")]]
    with open(os.path.join(args.out, "rows.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(args.out, "rows.json"), "w") as f:
        json.dump(rows, f, indent=1, default=float)
    agg = aggregate(rows)
    label = f"FID@{args.num_samples} (classifier features)"
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table(agg, label))
    title = f"teacher vs consistency students, mean of {len(seeds)} seeds"
    plot_quality_vs_nfe(agg, os.path.join(args.out, "pareto_nfe.png"), quality_label=label,
                        title=title)
    plot_quality_vs_seconds(agg, os.path.join(args.out, "pareto_seconds.png"),
                            quality_label=label, title=title)
    with open(os.path.join(args.out, "run.json"), "w") as f:
        json.dump({"args": vars(args), "wall_s": time.perf_counter() - start}, f, indent=2)
    print(table(agg, label))


if __name__ == "__main__":
    main()
