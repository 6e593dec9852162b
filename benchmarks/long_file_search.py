"""Search inside a long recording: the README's long-file example (``audio.long=windows``).

One long file is made of ``--inside`` test clips of the synthetic benchmark played back to back
(clip i starts at ``i · 4`` s); the library is that file plus ``--library`` other test clips.
Every English caption of a clip inside the long file is a query. Two indexes are built with the
same model: ``first`` (each file's first clip_seconds, the default) and ``--windows`` (window =
clip_seconds, hop = half of it). Reported: how often the long file is in the top 10, and, with
windows, how often the reported offset falls inside the clip the caption describes; as a control,
how often the long file shows up for the captions of 30 library clips it does not contain.

    python benchmarks/long_file_search.py --run RUN --data demo/data --out /tmp/long_search
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf

import clarion
from clarion.serve.index import SearchIndex, build_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained run or export")
    parser.add_argument("--data", type=Path, required=True, help="`clarion synth` output (test.csv, audio/)")
    parser.add_argument("--out", type=Path, required=True, help="work folder (replaced)")
    parser.add_argument("--inside", type=int, default=30, help="test clips played back to back in the long file")
    parser.add_argument("--library", type=int, default=200, help="other test clips in the library")
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()

    captions: dict[str, list[str]] = defaultdict(list)
    with open(args.data / "test.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("lang", "en") == "en":
                captions[row["audio"]].append(row["caption"])
    clips = sorted(captions)
    inside, others = clips[: args.inside], clips[args.inside : args.inside + args.library]

    shutil.rmtree(args.out, ignore_errors=True)
    audio = args.out / "audio"
    audio.mkdir(parents=True)
    starts, parts, rate, t = {}, [], None, 0.0
    for clip in inside:
        wave, rate = sf.read(args.data / clip, dtype="float32")
        starts[clip] = (t, t + len(wave) / rate)
        parts.append(wave)
        t += len(wave) / rate
    sf.write(audio / "long_recording.wav", np.concatenate(parts), rate)
    for clip in others:
        shutil.copy(args.data / clip, audio / Path(clip).name)

    model = clarion.load(args.run, device="cpu")
    clip_seconds = model.cfg.audio.clip_seconds
    build_index(audio, model, args.out / "first")
    build_index(audio, clarion.load(args.run, device="cpu", long="windows", hop_seconds=clip_seconds / 2),
                args.out / "windows", windows=True)
    first, windows = SearchIndex.open(args.out / "first"), SearchIndex.open(args.out / "windows")

    found = {"first": 0, "windows": 0}
    right_offset, queries, example = 0, 0, None
    for clip in inside:
        for caption in captions[clip]:
            queries += 1
            for name, index in (("first", first), ("windows", windows)):
                hits = index.search_text(caption, args.k)
                hit = next((h for h in hits if h.path == "long_recording.wav"), None)
                found[name] += hit is not None
                if name == "windows" and hit is not None:
                    lo, hi = starts[clip]
                    # the best window overlaps the described clip by at least half a window
                    inside_clip = min(hi, hit.offset + clip_seconds) - max(lo, hit.offset) >= clip_seconds / 2
                    right_offset += inside_clip
                    if example is None and inside_clip and hit.rank == 1 and lo > 60:
                        example = {"query": caption, "rank": hit.rank, "offset": hit.offset, "clip_starts": lo}
    # control: captions of library clips (not in the long file); the long file should not show up
    control = [c for clip in others[:30] for c in captions[clip]]
    false_hits = {name: sum(any(h.path == "long_recording.wav" for h in index.search_text(c, args.k)) for c in control)
                  for name, index in (("first", first), ("windows", windows))}
    result = {
        "long_file_seconds": round(t, 1), "clips_inside": len(inside), "library": len(others) + 1, "queries": queries,
        "k": args.k, f"long_file_in_top{args.k}": {k: round(v / queries, 3) for k, v in found.items()},
        "offset_in_the_described_clip": round(right_offset / queries, 3),
        f"control_queries_with_long_file_in_top{args.k}": {k: round(v / len(control), 3) for k, v in false_hits.items()},
        "control_queries": len(control), "example": example,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
