"""Report-generation language scores: pycocoevalcap's BLEU-1..4, METEOR, ROUGE-L and CIDEr-D.

As R2Gen's ``compute_scores``, every study has one reference and one hypothesis, both passed to
the scorers as given (no PTB tokenisation): BLEU counts clipped n-grams over the corpus with the
"closest" reference length brevity penalty, ROUGE-L averages the per-study LCS F-measure
(beta 1.2), CIDEr-D takes its IDF from the evaluated references, and METEOR 1.5 (Java) reports
its aggregate score. The one change: line breaks and "|||" become spaces in every string,
because METEOR's Java process reads one line per request with "|||" as the field separator and
otherwise answers out of step ("could not convert string to float") or never.

METEOR runs in a child Python process of its own session with a time limit; when Java is
missing, or the child fails or runs out of time (its process group is then killed), one line
says why and the other scores are returned without "meteor".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

SCORES = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")

_METEOR_BREAKERS = re.compile(r"\r|\n|\|\|\|")

# Reads {"references": [...], "hypotheses": [...]} from stdin and prints METEOR's aggregate
# score. It kills its JVM and leaves by os._exit: pycocoevalcap's Meteor keeps its lock after a
# failed read, and its __del__ would then wait for that lock forever.
_METEOR_CHILD = """
import json, os, sys
from pycocoevalcap.meteor.meteor import Meteor
data = json.load(sys.stdin)
gts = {i: [r] for i, r in enumerate(data["references"])}
res = {i: [h] for i, h in enumerate(data["hypotheses"])}
status, meteor = 0, None
try:
    meteor = Meteor()
    print(repr(float(meteor.compute_score(gts, res)[0])))
except Exception as e:
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    status = 1
if meteor is not None:
    meteor.meteor_p.kill()
sys.stdout.flush()
sys.stderr.flush()
os._exit(status)
"""


def sanitize(text: str) -> str:
    """``text`` with every "\\r", "\\n" and "|||" replaced by a space."""
    return _METEOR_BREAKERS.sub(" ", text)


def meteor_score(
    references: Sequence[str], hypotheses: Sequence[str], timeout: float = 300.0
) -> tuple[float | None, str]:
    """METEOR 1.5's aggregate score of sanitised strings, run by pycocoevalcap in a child process.

    Returns:
      (score, "") or (None, reason) when Java is missing, the child fails, or it runs longer
      than ``timeout`` seconds (then its whole process group, the JVM included, is killed).
    """
    if shutil.which("java") is None:
        return None, "java not found"
    payload = json.dumps({"references": list(references), "hypotheses": list(hypotheses)})
    child = subprocess.Popen(
        [sys.executable, "-c", _METEOR_CHILD],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    try:
        out, err = child.communicate(payload, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the child is not reaped yet: its group exists
        child.communicate()
        return None, f"no answer within {timeout:g} s"
    lines = out.strip().splitlines()
    if child.returncode != 0 or not lines:
        last = (err.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
        return None, f"failed: {last}"
    try:
        return float(lines[-1]), ""
    except ValueError:
        return None, f"failed: unexpected output {lines[-1][:80]!r}"


def caption_scores(
    references: Sequence[str], hypotheses: Sequence[str], *, meteor: bool = True,
    meteor_timeout: float = 300.0,
) -> dict[str, float]:
    """Corpus scores of generated reports against their references (one each).

    Args:
      references: [N] ground-truth reports (e.g. cleaned), none blank.
      hypotheses: [N] generated reports; may be empty strings.
      meteor: False skips METEOR (its Java start-up takes seconds; quick runs and tests).
      meteor_timeout: seconds METEOR may take before it is skipped.

    Returns:
      {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"} as floats;
      without "meteor" (after a one-line notice on stdout) when METEOR cannot run.
    """
    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"need as many references as hypotheses, at least one; got "
                         f"{len(references)} and {len(hypotheses)}.")
    references = [sanitize(r) for r in references]
    hypotheses = [sanitize(h) for h in hypotheses]
    blank = [i for i, r in enumerate(references) if not r.split()]
    if blank:
        raise ValueError(f"reference {blank[0]} is blank ({len(blank)} blank references).")
    gts = {i: [r] for i, r in enumerate(references)}
    res = {i: [h] for i, h in enumerate(hypotheses)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    scores = {f"bleu_{n + 1}": float(b) for n, b in enumerate(bleu)}
    scores.update(rouge_l=float(rouge), cider=float(cider))
    if meteor:
        value, reason = meteor_score(references, hypotheses, meteor_timeout)
        if value is None:
            print(f"meteor: skipped ({reason})", flush=True)
        else:
            scores["meteor"] = value
    return {name: scores[name] for name in SCORES if name in scores}
