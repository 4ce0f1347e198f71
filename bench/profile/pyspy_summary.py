"""Summarise py-spy's collapsed stacks (``py-spy record --format raw``): self and inclusive
sample shares per function, and the top leaf lines.

    python pyspy_summary.py ../out/pyspy-seq.txt [--top 25] [--under Server._read_frames]
"""

import argparse
import collections
import re

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*):?(?P<line>\d*)\)$")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--under", help="only stacks that pass through this function")
    args = parser.parse_args()

    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    lines: collections.Counter[str] = collections.Counter()
    total = 0
    with open(args.file) as f:
        for row in f:
            stack, _, count = row.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            funcs = []
            for frame in frames:
                m = FRAME.match(frame)
                funcs.append(f"{m['func']} ({m['file']})" if m else frame)
            if args.under and not any(args.under in fn for fn in funcs):
                continue
            n = int(count)
            total += n
            for fn in set(funcs):
                inclusive[fn] += n
            own[funcs[-1]] += n
            lines[frames[-1]] += n
    print(f"{total} samples" + (f" under {args.under}" if args.under else ""))
    for title, counter in (("inclusive", inclusive), ("self", own), ("self, by line", lines)):
        print(f"\n{title}:")
        for name, n in counter.most_common(args.top):
            print(f"  {100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
