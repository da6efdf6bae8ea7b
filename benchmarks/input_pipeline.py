"""ImageNet's host input pipeline (Table 2) against what Inception V3's train step consumes:
images per second per host CPU core for JPEG decoding and for ``zhang/experiment/imagenet.py``'s
transforms, and the host cores per accelerator chip that this implies.

    python benchmarks/input_pipeline.py                              # once models has inception_v3
    python benchmarks/input_pipeline.py --train_gflops_per_image 34  # a count of your own

Prints one JSON object. The images are synthetic JPEGs made in memory: ``--images`` distinct
500x375 pictures (smooth colour waves, blown-up noise at three scales and pixel noise, a
natural photograph's spectrum roughly), saved by Pillow at quality 90 to about 110 KB each,
ImageNet's average file size. Decoding is tfds's own without TensorFlow
(``tfds.features.Image.decode_example_np``: Pillow, as ``tfds.data_source`` does in grain's
workers). Cases, each run for ``--seconds`` in this process pinned to one core:
  decode        JPEG bytes -> uint8 (375, 500, 3)
  train, eval   the transforms alone, on decoded images (``TrainTransform``, ``EvalTransform``)
  decode_train  both, as one training example costs a worker (a generator per example, as
                grain's ``random_map`` passes)
  decode_eval   both, for evaluation or training without augmentation
Rates are images per CPU second of the process (the rate one core gives, however busy the
machine) and per wall second. ``--workers 1,2``: decode_train through grain's DataLoader with
that many worker processes, batches of 32, images per wall second (the machine's cores, no
pinning). ``--compare_malloc``: one worker with ``imagenet.tune_malloc`` and one with glibc's
default policy, alternated twice (a fresh worker has only a worker's history of allocations;
this process's is skewed by making the JPEGs).

Demand: images/s = ``--fraction`` (0.4) x peak FLOP/s / train FLOPs per image, and host
cores = that / decode_train's per-core rate. Peaks, dense bf16 per chip, from the vendors'
data sheets: TPU v4 275 TFLOP/s, TPU v5e 197, H100 SXM 989 (the H200's is the same). The
train FLOPs per image are ``zhang.runtime.flops.train_flops`` of ``inception_v3`` at
299x299x3 (3 x forward: multiply-adds x 2 of every conv and dense layer); without that model,
``--train_gflops_per_image`` is required.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time

import grain
import numpy as np
import PIL
from PIL import Image

from zhang.experiment import imagenet

PEAK_TFLOPS = {"tpu_v4": 275.0, "tpu_v5e": 197.0, "h100_sxm": 989.0}  # dense bf16, per chip
WIDTH, HEIGHT, QUALITY = 500, 375, 90
NOISE = 23.0  # pixel noise that brings the files to about 110 KB at quality 90


def picture(rng: np.random.Generator, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
  """uint8 (height, width, 3): colour waves, blown-up noise at three scales, pixel noise."""
  yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
  image = np.zeros((height, width, 3)) + rng.uniform(60, 190, 3)
  for c in range(3):
    for _ in range(4):
      fy, fx = rng.uniform(0.5, 6, 2)
      image[..., c] += rng.uniform(15, 40) * np.cos(
          2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 2 * np.pi))
  for scale, amplitude in ((64, 25), (16, 18), (4, 12)):
    small = rng.normal(0, 1, (height // scale + 1, width // scale + 1, 3)).astype(np.float32)
    image += amplitude * np.stack(
        [np.asarray(Image.fromarray(small[..., c], "F").resize(
            (width, height), Image.Resampling.BICUBIC)) for c in range(3)], -1)
  image += rng.normal(0, NOISE, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def jpegs(count: int, seed: int = 0) -> list[bytes]:
  out = []
  for i in range(count):
    buffer = io.BytesIO()
    Image.fromarray(picture(np.random.default_rng([seed, i]))).save(buffer, "JPEG",
                                                                     quality=QUALITY)
    out.append(buffer.getvalue())
  return out


def decoder():
  """tfds's numpy decoding of an ImageNet image (Pillow when OpenCV is absent)."""
  import tensorflow_datasets as tfds
  feature = tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
  return feature.decode_example_np


class Decode(grain.transforms.Map):
  """grain: {"jpeg": bytes, "label"} -> the tfds example (what the data source returns)."""

  def __init__(self):
    self._decode = None

  def map(self, element):
    if self._decode is None:
      self._decode = decoder()
    return {"image": self._decode(element["jpeg"]), "label": element["label"]}


def timed(step, count: int, seconds: float) -> dict:
  """Runs ``step(i)`` for i = 0, 1, ... (one warm-up pass over ``count``) for ``seconds``."""
  for i in range(count):
    step(i)
  n, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
  while time.perf_counter() - wall0 < seconds:
    step(n)
    n += 1
  wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
  return {"images": n, "images_per_cpu_s": n / cpu, "images_per_wall_s": n / wall,
          "ms_per_image_cpu": 1e3 * cpu / n}


def single_core(data: list[bytes], seconds: float, cases: list[str], tune: bool) -> dict:
  decode = decoder()
  train = imagenet.TrainTransform(tune_malloc=tune)
  evaluate = imagenet.EvalTransform(tune_malloc=tune)
  count = len(data)
  decoded = [{"image": decode(b), "label": 0} for b in data]
  steps = {
      "decode": lambda i: decode(data[i % count]),
      "train": lambda i: train.random_map(decoded[i % count], np.random.default_rng(i)),
      "eval": lambda i: evaluate.map(decoded[i % count]),
      "decode_train": lambda i: train.random_map(
          {"image": decode(data[i % count]), "label": 0}, np.random.default_rng(i)),
      "decode_eval": lambda i: evaluate.map({"image": decode(data[i % count]), "label": 0}),
  }
  return {name: timed(steps[name], count, seconds) for name in cases}


def with_workers(data: list[bytes], workers: int, seconds: float, batch: int = 32,
                 tune: bool = True) -> dict:
  """decode_train through grain's DataLoader with ``workers`` processes: images/s (wall)."""
  from absl import flags
  if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags
    flags.FLAGS.mark_as_parsed()
  source = [{"jpeg": b, "label": i} for i, b in enumerate(data)]
  loader = grain.DataLoader(
      data_source=source,
      sampler=grain.samplers.IndexSampler(len(source), shuffle=True, seed=0, num_epochs=None),
      operations=[Decode(), imagenet.TrainTransform(tune_malloc=tune),
                  grain.transforms.Batch(batch)],
      worker_count=workers)
  batches = iter(loader)
  for _ in range(2 * max(workers, 1)):  # start-up: the workers import and fill their buffers
    next(batches)
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    n += len(next(batches)["label"])
  wall = time.perf_counter() - start
  return {"workers": workers, "batch": batch, "tune_malloc": tune, "images": n,
          "images_per_wall_s": n / wall}


def train_gflops(given: float | None) -> tuple[float, str]:
  if given is not None:
    return given, "--train_gflops_per_image"
  from zhang.errors import UsageError
  from zhang.experiment import models
  from zhang.runtime import flops
  try:
    spec = models.get("inception_v3")
  except UsageError:
    sys.exit("input_pipeline.py: no model inception_v3 in zhang.experiment.models yet: pass "
             "--train_gflops_per_image (Inception V3's train FLOPs per 299x299 image, in GFLOP)")
  count = flops.train_flops(spec.build(1000), (299, 299, 3), 1)
  return count / 1e9, "zhang.runtime.flops.train_flops(inception_v3, 299x299x3)"


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor()


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=64, help="distinct JPEGs")
  parser.add_argument("--seconds", type=float, default=5.0, help="per case")
  parser.add_argument("--cases", default="decode,train,eval,decode_train,decode_eval")
  parser.add_argument("--workers", default="1,2",
                      help="grain worker counts to run decode_train with ('' for none)")
  parser.add_argument("--fraction", type=float, default=0.4,
                      help="the fraction of the accelerator's peak the train step reaches")
  parser.add_argument("--train_gflops_per_image", type=float, default=None)
  parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                      help="whether the transforms call imagenet.tune_malloc")
  parser.add_argument("--compare_malloc", action="store_true")
  args = parser.parse_args(argv)
  cases = [c for c in args.cases.split(",") if c]
  gflops, gflops_source = (None, None)
  if "decode_train" in cases:  # refused before anything is measured
    gflops, gflops_source = train_gflops(args.train_gflops_per_image)

  load_before = os.getloadavg()
  data = jpegs(args.images)
  allowed = os.sched_getaffinity(0)
  os.sched_setaffinity(0, {min(allowed)})
  per_core = single_core(data, args.seconds, cases, args.malloc == "tuned")
  os.sched_setaffinity(0, allowed)
  result = {
      "machine": {"cpu": cpu_model(), "cpus": len(allowed), "python": platform.python_version(),
                  "numpy": np.__version__, "pillow": PIL.__version__,
                  "grain": getattr(grain, "__version__", "?")},
      "load_before": [round(x, 2) for x in load_before],
      "jpeg": {"count": len(data), "width": WIDTH, "height": HEIGHT, "quality": QUALITY,
               "mean_kb": round(sum(map(len, data)) / len(data) / 1e3, 1)},
      "malloc": args.malloc, "seconds_per_case": args.seconds, "per_core": per_core,
  }
  if args.compare_malloc:  # fresh worker processes: their malloc has only a worker's history
    rounds = [with_workers(data, 1, args.seconds, tune=tune) for tune in (True, False) * 2]
    result["malloc_one_worker"] = rounds
    result["tuned_over_default_malloc"] = (
        sum(r["images_per_wall_s"] for r in rounds[0::2])
        / sum(r["images_per_wall_s"] for r in rounds[1::2]))
  worker_counts = [int(w) for w in args.workers.split(",") if w]
  if worker_counts:
    result["grain_workers"] = [with_workers(data, w, args.seconds) for w in worker_counts]
  if gflops is not None:
    rate = per_core["decode_train"]["images_per_cpu_s"]
    result["train_gflops_per_image"] = gflops
    result["train_gflops_source"] = gflops_source
    result["fraction_of_peak"] = args.fraction
    result["accelerators"] = []
    for name, peak in PEAK_TFLOPS.items():
      needed = args.fraction * peak * 1e12 / (gflops * 1e9)
      result["accelerators"].append({"name": name, "peak_tflops": peak,
                                     "images_per_s": needed, "host_cores": needed / rate})
  result["load_after"] = [round(x, 2) for x in os.getloadavg()]
  print(json.dumps(result))


if __name__ == "__main__":
  main()
