"""Language-model evaluation: held-out loss against a unigram baseline, and the IOI behaviour.

Pure functions of a model and its tokenizer; the zoo uses them for its reports, notebook 01 for
any model (:func:`mlsae.studies.experiment.language_model_report`).
"""

from __future__ import annotations

import random

import torch

from mlsae.data.corpus import IOI_PROMPT, NAMES, OBJECTS, PLACES


@torch.no_grad()
def evaluate_lm(model, tokenizer, batches, unigram_counts: torch.Tensor) -> dict:
    """Held-out next-token loss (nats/token, every target position of every block, EOS
    included) and the add-one-smoothed train-unigram cross-entropy on the same targets."""
    model.eval()
    logp_uni = torch.log((unigram_counts.double() + 1) / (unigram_counts.sum().double() + unigram_counts.numel()))
    total, uni, n = 0.0, 0.0, 0
    for x in batches:
        logits = model(input_ids=x).logits.float()
        targets = x[:, 1:]
        lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        total += -lp.double().sum().item()
        uni += -logp_uni[targets].sum().item()
        n += targets.numel()
    return dict(heldout_loss=total / n, unigram_loss=uni / n, eval_tokens=n)


def ioi_prompts(n: int = 200, seed: int = 12345) -> list[tuple[str, str, str]]:
    """``(prompt, indirect object, subject)`` triples in the paper's template, with random
    names (both orders), places and objects."""
    rng = random.Random(f"ioi-eval:{seed}")
    out = []
    for _ in range(n):
        x, y = rng.sample(NAMES, 2)
        s, io = (y, x) if rng.random() < 0.5 else (x, y)
        obj = rng.choice(OBJECTS)
        art = "an" if obj[0] in "aeiou" else "a"
        out.append((f"When {x} and {y} went to the {rng.choice(PLACES)}, {s} gave {art} {obj} to", io, s))
    return out


@torch.no_grad()
def ioi_report(model, tokenizer, n_prompts: int = 200) -> dict:
    """Top-5 next tokens for ``IOI_PROMPT`` and, over random prompts of its template, the top-1
    accuracy and mean logit difference between the indirect object and the subject."""
    model.eval()
    ids = tokenizer(IOI_PROMPT, return_tensors="pt").input_ids
    probs = torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    top = torch.topk(probs, 5)
    top5 = [[tokenizer.decode([int(i)]), round(float(p), 4)] for p, i in zip(top.values, top.indices, strict=True)]
    hits, diffs = 0, []
    for prompt, io, s in ioi_prompts(n_prompts):
        x = tokenizer(prompt, return_tensors="pt").input_ids
        logits = model(input_ids=x).logits[0, -1]
        io_id, s_id = (tokenizer(" " + w, add_special_tokens=False).input_ids[0] for w in (io, s))
        hits += int(logits.argmax()) == io_id
        diffs.append(float(logits[io_id] - logits[s_id]))
    return dict(ioi_prompt=IOI_PROMPT, ioi_top5=top5, ioi_top1_is_mary=top5[0][0] == " Mary",
                ioi_template_accuracy=hits / n_prompts, ioi_template_logit_diff=sum(diffs) / len(diffs),
                ioi_template_prompts=n_prompts)
