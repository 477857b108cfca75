"""``nas compress MODEL --task TASK --pipeline STAGE[:ARG],... --formats FMT,... --out DIR``:
compress a saved tf_keras model and export it, every file re-measured (``compress_report.json``)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "compress",
        help="prune, quantize, distil or factor a saved model and export it (tflite, tflm, onnx, openvino, tvm, executorch)",
        description=(
            "Stages: prune[:SPARSITY], structured[:RATIO], lowrank[:ENERGY] or lowrank:rank=R, dynamic, fp16, "
            "int8[:CALIBRATION][:per_channel=0], strip[:keep], mixed[:MAX_ERROR], qat[:EPOCHS], distill[:EPOCHS], finetune[:EPOCHS]; more "
            "arguments as :key=value (e.g. prune:0.5:epochs=3). Formats: tflite, tflm, onnx, openvino, tvm, executorch "
            "(the last two need pip install 'edge-nas[tvm,executorch]')."
        ),
    )
    p.add_argument("model", help="saved tf_keras model (.keras, .h5 or SavedModel folder)")
    p.add_argument("--task", required=True, help="task: mnist5k, digits, mnist1d or an .npz file")
    p.add_argument("--pipeline", required=True, help="comma-separated stages, applied in order")
    p.add_argument("--formats", default="tflite", help="comma-separated export formats (default: tflite)")
    p.add_argument(
        "--tvm-target",
        help="with --formats tvm: also compile for this TVM target, e.g. 'llvm -mtriple=aarch64-linux-gnu' "
        "(saved as a .tar the device links; only the host library is run here)",
    )
    p.add_argument("--out", required=True, help="output folder (written only when everything worked)")
    p.add_argument(
        "--teacher", help="saved tf_keras teacher for distillation (also used by every fine-tuning)"
    )
    p.add_argument(
        "--trust-model-code",
        action="store_true",
        help="allow legacy .h5 and SavedModel files for MODEL and --teacher; loading them can run code "
        "stored in the file (.keras files load in safe mode without it)",
    )
    p.add_argument("--target-size-kb", type=float, help="stop at the first stage whose file is this small")
    p.add_argument("--target-latency-ms", type=float, help="stop at the first stage this fast (LiteRT here)")
    p.add_argument(
        "--max-accuracy-drop", type=float, help="undo stages that lose more accuracy points than this"
    )
    p.add_argument("--threads", type=int, default=1, help="runtime threads for latency (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed for fine-tuning")
    p.add_argument("--quiet", action="store_true", help="print only the final summary")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    # Cheap checks first, so a typo fails in a second, before TensorFlow loads a model.
    from pathlib import Path

    from compress import ExportFailed, StageError, Trainer, build_pipeline, compress_and_export
    from compress.exporters import get_exporter
    from compress.modelio import check_model_file, load_keras_model
    from compress.pipeline import check_out_dir
    from nas.data import load_task
    from search_spaces import FatalError, InputError

    if not [s for s in args.pipeline.split(",") if s.strip()]:
        raise InputError(f"--pipeline: expected at least one stage (e.g. int8), got {args.pipeline!r}.")
    if args.threads < 1:
        raise InputError(f"--threads: expected an int >= 1, got {args.threads}.")
    for flag, value, low in (
        ("--target-size-kb", args.target_size_kb, 0.0),
        ("--target-latency-ms", args.target_latency_ms, 0.0),
        ("--max-accuracy-drop", args.max_accuracy_drop, None),
    ):
        if value is None:
            continue
        ok = math.isfinite(value) and (value > 0 if low is not None else value >= 0)
        if not ok:
            raise InputError(
                f"{flag}: expected a finite number {'> 0' if low is not None else '>= 0'}, got {value}."
            )
    check_out_dir(Path(args.out))
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    for name in formats:
        get_exporter(name)
    if args.tvm_target is not None:
        from latency_models.runtimes.tvm import check_target

        if "tvm" not in formats:
            raise InputError(f"--tvm-target: expected --formats to include tvm, got {args.formats!r}.")
        check_target(args.tvm_target)
    build_pipeline(args.pipeline, Trainer(teacher=object() if args.teacher else None))  # argument checks only
    task = load_task(args.task)
    check_model_file(args.model, "MODEL", args.trust_model_code)  # both files, before TensorFlow loads
    if args.teacher:
        check_model_file(args.teacher, "--teacher", args.trust_model_code)
    check = task.inputs(task.x_test[:64])
    model = load_keras_model(args.model, "MODEL", trust_code=args.trust_model_code, check=check)
    teacher = (
        load_keras_model(args.teacher, "--teacher", trust_code=args.trust_model_code, check=check)
        if args.teacher
        else None
    )

    def say(message: str) -> None:
        if not args.quiet:
            print(f"[nas compress] {message}", file=sys.stderr, flush=True)

    try:
        report = compress_and_export(
            model,
            task.compress_data(),
            args.pipeline,
            formats,
            args.out,
            teacher=teacher,
            target_size_kb=args.target_size_kb,
            target_latency_ms=args.target_latency_ms,
            max_accuracy_drop=args.max_accuracy_drop,
            threads=args.threads,
            progress=say,
            trainer=Trainer(seed=args.seed),
            tvm_target=args.tvm_target,
        )
    except ExportFailed as e:
        # A converter failed on a layer: the other formats and the report are written; exit 2.
        _print_exports(e.report)
        raise InputError(str(e)) from None
    except StageError as e:
        # A stage or an export that cannot handle this model: one line, exit 1, nothing written.
        raise FatalError(str(e)) from None
    _print_exports(report)
    if report.target is not None:
        print(("target met: " if report.target.met else "target not met: ") + report.target.reason)
    return 0


def _print_exports(report: Any) -> None:
    for e in report.exports:
        extra = f" arena {e.arena_bytes:,} B" if e.arena_bytes else ""
        extra += f" agreement {100 * e.agreement:.1f}%" if e.agreement is not None else ""
        print(
            f"{e.format:<9} {e.dtype:<5} {', '.join(e.files):<40} acc {100 * e.accuracy:6.2f}% "
            f"size {e.size_bytes / 1024:8.1f} KB gzip {e.gzip_bytes / 1024:8.1f} KB "
            f"latency {e.latency_ms:.3f} ms{extra}"
        )
