#!/usr/bin/env python3
"""Build the demo corpora and multiple-choice benchmarks from text shipped in Debian packages.

Sources (all read locally, nothing is downloaded here; `scripts/install_demo_sources.sh` fetches
the packages):

* general domain  -- Jane Austen's six novels, `r-cran-janeaustenr` (an R data file, decoded
  here with a minimal reader for R's XDR serialisation format);
* target domain   -- Gene Ontology term definitions (molecular biology / biomedicine),
  `r-bioc-go.db` (an SQLite database);
* general MC      -- WordNet 3.0 glosses of common English words, `wordnet-base`;
* domain MC       -- Gene Ontology definitions of held-out terms, with sibling terms as distractors.

Output (default `data/demo/`; `--full` writes `data/demo-full/` with every eligible benchmark item
and a richer domain text):

    general/{train,heldout,probe}.jsonl   {"text": ...} per line
    domain/{train,heldout}.jsonl          {"text": ...} per line
    benchmarks/general_mc.jsonl           {"question": ..., "choices": [4 str], "answer": int}
    benchmarks/domain_mc.jsonl            same
    README.md                             sources, licences, sizes, how to regenerate

The build is deterministic: fixed seed, sorted inputs, no timestamps; two runs on the same
package versions give byte-identical files. Standard library only.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import sqlite3
import struct
import sys
import time
import zlib
from pathlib import Path

SEED = 1234
REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCES = Path(os.environ.get("ADEPT_DEMO_SOURCES", Path.home() / ".cache" / "adept-demo-sources"))

# Package -> expected version, candidate relative paths (first existing wins), upstream, licence.
PACKAGES = {
    "r-cran-janeaustenr": {
        "version": "1.0.0-1",
        "dirs": [
            "usr/lib/R/site-library/janeaustenr/data",
            "usr/local/lib/R/site-library/janeaustenr/data",
            "usr/lib/R/library/janeaustenr/data",
        ],
        "files": ["Rdata.rdb", "Rdata.rdx"],
        "what": "Jane Austen's complete novels (Emma, Mansfield Park, Northanger Abbey, Persuasion, "
        "Pride and Prejudice, Sense and Sensibility), Project Gutenberg texts",
        "license": "texts: public domain; R package: MIT (c) 2016-2017 Julia Silge",
    },
    "r-bioc-go.db": {
        "version": "3.16.0-1",
        "dirs": [
            "usr/lib/R/site-library/GO.db/extdata",
            "usr/local/lib/R/site-library/GO.db/extdata",
            "usr/lib/R/library/GO.db/extdata",
        ],
        "files": ["GO.sqlite"],
        "what": "Gene Ontology terms and definitions (go-basic.obo release 2022-07-01)",
        "license": "GO content: CC BY 4.0 (c) Gene Ontology Consortium; R package: Artistic-2.0",
    },
    "wordnet-base": {
        "version": "1:3.0-37",
        "dirs": ["usr/share/wordnet"],
        "files": [
            "cntlist.rev",
            "data.adj",
            "data.noun",
            "data.verb",
            "index.adj",
            "index.noun",
            "index.verb",
        ],
        "what": "WordNet 3.0 lexical database (glosses and sense frequencies)",
        "license": "WordNet 3.0 license (BSD-style, redistribution permitted with the copyright "
        "notice): WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.",
    },
}


class MissingSource(RuntimeError):
    pass


# --------------------------------------------------------------------------- locating sources


def dpkg_version(root: Path, package: str) -> str | None:
    marker = root / ".deb-version"
    if marker.is_file():
        return marker.read_text(encoding="utf-8").strip()
    status = Path("/var/lib/dpkg/status")
    if root == Path("/") and status.is_file():
        for block in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            fields = dict(
                line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(" ")
            )
            if fields.get("Package") == package and "installed" in fields.get("Status", ""):
                return fields.get("Version")
    return None


def locate(package: str, sources: list[Path]) -> tuple[Path, str | None]:
    """Return (directory holding the package's files, package version)."""
    spec = PACKAGES[package]
    roots = [s / package for s in sources] + [Path("/")]
    tried = []
    for root in roots:
        for rel in spec["dirs"]:
            d = root / rel
            tried.append(str(d))
            if all((d / f).is_file() for f in spec["files"]):
                return d, dpkg_version(root, package)
    raise MissingSource(
        f"cannot find the files of Debian package '{package}' ({', '.join(spec['files'])}).\n"
        f"Install it with: bash scripts/install_demo_sources.sh  (or: apt-get install {package})\n"
        f"Looked in: {', '.join(tried)}"
    )


# --------------------------------------------------------------------------- R serialisation


class _RReader:
    """Just enough of R's XDR serialisation (format 2/3) to read character vectors and lists."""

    def __init__(self, data: bytes):
        self.b = data
        self.p = 0
        self.refs: list = []

    def int(self) -> int:
        (v,) = struct.unpack_from(">i", self.b, self.p)
        self.p += 4
        return v

    def raw(self, n: int) -> bytes:
        v = self.b[self.p : self.p + n]
        self.p += n
        return v

    def read(self):
        if self.raw(2) != b"X\n":
            raise ValueError("not an XDR R serialisation")
        version = self.int()
        self.int()
        self.int()
        if version == 3:
            self.raw(self.int())  # native encoding name
        return self.item()

    def item(self):
        flags = self.int()
        t = flags & 0xFF
        has_attr = flags & (1 << 9)
        has_tag = flags & (1 << 10)
        if t == 254:  # NILVALUE_SXP
            return None
        if t == 255:  # REFSXP
            idx = flags >> 8 or self.int()
            return self.refs[idx - 1]
        if t in range(240, 254):  # other pseudo-SEXPs (environments, missing arg, ...)
            return None
        if t == 1:  # SYMSXP
            sym = ("sym", self.item())
            self.refs.append(sym)
            return sym
        if t == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None
            latin1 = (flags >> 12) & 4
            return self.raw(n).decode("latin-1" if latin1 else "utf-8", errors="replace")
        if t == 2:  # LISTSXP (pairlist, used for attributes)
            if has_attr:
                self.item()
            tag = self.item() if has_tag else None
            car = self.item()
            cdr = self.item()
            return [(tag, car)] + (cdr if isinstance(cdr, list) else [])
        if t in (16, 19, 20):  # STRSXP, VECSXP, EXPRSXP
            value = [self.item() for _ in range(self.int())]
        elif t in (10, 13):  # LGLSXP, INTSXP
            n = self.int()
            value = list(struct.unpack(f">{n}i", self.raw(4 * n)))
        elif t == 14:  # REALSXP
            n = self.int()
            value = list(struct.unpack(f">{n}d", self.raw(8 * n)))
        else:
            raise ValueError(f"unsupported R object type {t}")
        attrs = self.item() if has_attr else None
        if attrs:
            names = dict((tag[1], v) for tag, v in attrs if isinstance(tag, tuple)).get("names")
            if names is not None:
                return dict(zip(names, value))
        return value


def read_r_lazyload(directory: Path, stem: str = "Rdata") -> dict[str, object]:
    """Read every object of an R lazy-load database (`stem.rdx` + `stem.rdb`)."""
    index = _RReader(gzip.decompress((directory / f"{stem}.rdx").read_bytes())).read()
    db = (directory / f"{stem}.rdb").read_bytes()
    out = {}
    for name, (offset, length) in sorted(index["variables"].items()):
        blob = db[offset : offset + length]
        kind = blob[4:5]
        if kind == b"Z":
            import lzma

            payload = lzma.decompress(blob[5:])
        elif kind == b"2":
            import bz2

            payload = bz2.decompress(blob[5:])
        elif kind == b"0":
            payload = blob[5:]
        else:
            payload = zlib.decompress(blob[4:])
        out[name] = _RReader(payload).read()
    return out


# --------------------------------------------------------------------------- helpers


def norm_ws(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def pack(paragraphs: list[str], max_chars: int) -> list[str]:
    """Greedily join consecutive paragraphs into documents of at most max_chars (a longer
    paragraph stays whole)."""
    docs, cur, size = [], [], 0
    for p in paragraphs:
        if cur and size + len(p) + 2 > max_chars:
            docs.append("\n\n".join(cur))
            cur, size = [], 0
        cur.append(p)
        size += len(p) + 2
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def balance_answers(items: list[dict], rng: random.Random) -> list[dict]:
    """Move each gold answer so that every position 0-3 is used equally often (+-1)."""
    positions = [i % 4 for i in range(len(items))]
    rng.shuffle(positions)
    for item, pos in zip(items, positions):
        ch, a = item["choices"], item["answer"]
        ch[a], ch[pos] = ch[pos], ch[a]
        item["answer"] = pos
    return items


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- general: Austen

CHAPTER_RE = re.compile(r"^\s*chapter\s+([ivxlc]+|\d+)\.?\s*$", re.I)
DROP_RE = re.compile(r"^(volume\s+[ivx]+|finis|the end|[*\s]+)$", re.I)

BOOK_TITLES = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}


def austen_chapters(directory: Path) -> list[tuple[str, int, list[str]]]:
    """[(book, chapter number, paragraphs)] in book order; front matter dropped."""
    books = read_r_lazyload(directory)
    chapters = []

    def flush(cur: list[str] | None, para: list[str]) -> None:
        if cur is not None and para:
            text = norm_ws(" ".join(para))
            text = re.sub(r"_([^_]+)_", r"\1", text).replace("_", "")
            if text and not DROP_RE.match(text):
                cur.append(text)
        para.clear()

    for book in sorted(books):
        lines = books[book]
        cur: list[str] | None = None
        para: list[str] = []
        n = 0
        for line in lines:
            line = line or ""
            if CHAPTER_RE.match(line):
                flush(cur, para)
                if cur:
                    chapters.append((book, n, cur))
                n += 1
                cur = []
            elif not line.strip():
                flush(cur, para)
            else:
                para.append(line.strip())
        flush(cur, para)
        if cur:
            chapters.append((book, n, cur))
    return chapters


def build_general(directory: Path, rng: random.Random, max_chars: int):
    chapters = austen_chapters(directory)
    keys = sorted((b, n) for b, n, _ in chapters)
    rng.shuffle(keys)
    n_probe, n_heldout = 12, 14
    split_of = {}
    for i, k in enumerate(keys):
        split_of[k] = "probe" if i < n_probe else "heldout" if i < n_probe + n_heldout else "train"
    splits: dict[str, list[str]] = {"train": [], "heldout": [], "probe": []}
    for book, n, paras in chapters:
        splits[split_of[(book, n)]].extend(pack(paras, max_chars))
    for docs in splits.values():
        rng.shuffle(docs)
    info = {
        "books": len({b for b, _, _ in chapters}),
        "chapters": {s: sum(1 for v in split_of.values() if v == s) for s in splits},
    }
    return splits, info


# --------------------------------------------------------------------------- domain: Gene Ontology

ONTOLOGIES = [("BP", "biological process"), ("MF", "molecular function"), ("CC", "cellular component")]
ROOTS = {"BP": "GO:0008150", "MF": "GO:0003674", "CC": "GO:0005575"}


def load_go(path: Path):
    con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    terms = {}
    for _id, go_id, name, ont, definition in con.execute(
        "SELECT _id, go_id, term, ontology, definition FROM go_term WHERE ontology IN ('BP','MF','CC')"
    ):
        terms[_id] = {
            "id": go_id,
            "name": norm_ws(name),
            "ont": ont,
            "def": norm_ws(definition) if definition else "",
            "isa": [],
            "rel": [],
            "syn": [],
        }
    for ont in ("bp", "mf", "cc"):
        for child, parent, rel in con.execute(f"SELECT _id, _parent_id, relationship_type FROM go_{ont}_parents"):
            if child in terms and parent in terms:
                (terms[child]["isa"] if rel == "isa" else terms[child]["rel"]).append((rel, parent))
    for _id, syn in con.execute("SELECT _id, synonym FROM go_synonym WHERE like_go_id = 0"):
        if _id in terms:
            terms[_id]["syn"].append(norm_ws(syn))
    con.close()
    by_go = {t["id"]: k for k, t in terms.items()}
    for t in terms.values():
        t["isa"].sort(key=lambda r: terms[r[1]]["id"])
        t["rel"].sort(key=lambda r: (r[0], terms[r[1]]["id"]))
        t["syn"] = sorted(set(t["syn"]) - {t["name"]})
    return terms, by_go


def go_paragraph(t: dict, terms: dict, full: bool) -> str:
    text = f"{t['name']}: {t['def']}"
    if full:
        extra = []
        if t["syn"]:
            extra.append("Also called " + "; ".join(t["syn"][:5]) + ".")
        parents = [terms[p]["name"] for _, p in t["isa"]]
        if parents:
            extra.append("It is a kind of " + "; ".join(parents) + ".")
        for rel, p in t["rel"]:
            verb = "is part of" if rel == "part of" else rel
            extra.append(f"It {verb} {terms[p]['name']}.")
        if extra:
            text += " " + " ".join(extra)
    return text


def go_documents(terms: dict, by_go: dict, max_chars: int, full: bool):
    """Depth-first walk of the is-a tree (first parent by GO id), siblings in name order, so that
    neighbouring definitions are related; documents never span two top-level branches."""
    children: dict[int, list[int]] = {k: [] for k in terms}
    for k, t in terms.items():
        if t["isa"]:
            children[t["isa"][0][1]].append(k)
    for v in children.values():
        v.sort(key=lambda k: (terms[k]["name"].lower(), terms[k]["id"]))
    docs: list[tuple[str, list[int]]] = []  # (text, term keys with a definition)
    seen: set[int] = set()

    def walk(start: int) -> list[int]:
        order, stack = [], [start]
        while stack:
            k = stack.pop()
            if k in seen:
                continue
            seen.add(k)
            order.append(k)
            stack.extend(reversed(children[k]))
        return order

    def emit(order: list[int]):
        keys = [k for k in order if terms[k]["def"]]
        cur, size = [], 0
        for k in keys + [None]:
            p = go_paragraph(terms[k], terms, full) if k is not None else ""
            if cur and (k is None or size + len(p) + 2 > max_chars):
                docs.append(("\n\n".join(go_paragraph(terms[c], terms, full) for c in cur), cur))
                cur, size = [], 0
            if k is not None:
                cur.append(k)
                size += len(p) + 2

    for ont, _ in ONTOLOGIES:
        root = by_go[ROOTS[ont]]
        emit([root])
        seen.add(root)
        for branch in children[root]:
            emit(walk(branch))
    rest = sorted((k for k in terms if k not in seen), key=lambda k: terms[k]["id"])
    emit(rest)
    return docs


def build_domain(path: Path, rng: random.Random, max_chars: int, full: bool):
    terms, by_go = load_go(path)
    docs = go_documents(terms, by_go, max_chars, full)
    order = list(range(len(docs)))
    rng.shuffle(order)
    n_heldout = max(1, round(0.05 * len(docs)))
    heldout_idx = sorted(order[:n_heldout])
    train_idx = sorted(order[n_heldout:])
    rng.shuffle(train_idx)
    rng.shuffle(heldout_idx)
    splits = {"train": [docs[i][0] for i in train_idx], "heldout": [docs[i][0] for i in heldout_idx]}
    heldout_terms = sorted(k for i in heldout_idx for k in docs[i][1])
    info = {"terms_with_definition": sum(1 for t in terms.values() if t["def"]), "terms": len(terms)}
    return splits, terms, heldout_terms, info


GO_GENERIC = {
    "activity",
    "process",
    "of",
    "the",
    "in",
    "to",
    "and",
    "or",
    "by",
    "via",
    "into",
    "from",
    "on",
    "a",
    "an",
    "involved",
    "cell",
    "cellular",
    "regulation",
    "positive",
    "negative",
    "complex",
}


def tokens(s: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", s.lower())


def domain_mc(terms: dict, heldout_terms: list[int], rng: random.Random, n_items: int | None):
    """Definition -> term name. Only held-out terms whose name is not spelled out in the
    definition (at most half of its specific words appear there); distractors are terms with the
    same is-a parent where possible (hard), then terms of the same ontology with the same last
    word, then any term of that ontology."""
    siblings: dict[int, list[int]] = {}
    for k, t in terms.items():
        for _, p in t["isa"]:
            siblings.setdefault(p, []).append(k)
    by_last: dict[tuple[str, str], list[int]] = {}
    by_ont: dict[str, list[int]] = {}
    for k in sorted(terms):
        t = terms[k]
        if t["def"]:
            by_last.setdefault((t["ont"], t["name"].split()[-1].lower()), []).append(k)
            by_ont.setdefault(t["ont"], []).append(k)

    items = []
    for k in heldout_terms:
        t = terms[k]
        d = t["def"]
        if not (40 <= len(d) <= 400) or len(t["name"]) > 80:
            continue
        words = [w for w in tokens(t["name"]) if w not in GO_GENERIC and len(w) > 2]
        dwords = set(tokens(d))
        if t["name"].lower() in d.lower() or (words and sum(w in dwords for w in words) / len(words) > 0.5):
            continue
        names = {t["name"].lower()}
        picks: list[int] = []
        pools = [
            sorted({s for _, p in t["isa"] for s in siblings.get(p, [])}),
            by_last.get((t["ont"], t["name"].split()[-1].lower()), []),
            by_ont[t["ont"]],
        ]
        for pool in pools:
            cand = [
                c
                for c in pool
                if terms[c]["def"]
                and len(terms[c]["name"]) <= 80
                and terms[c]["name"].lower() not in names
                and terms[c]["name"].lower() not in d.lower()
            ]
            rng.shuffle(cand)
            for c in cand:
                if len(picks) == 3:
                    break
                if terms[c]["name"].lower() not in names:
                    picks.append(c)
                    names.add(terms[c]["name"].lower())
            if len(picks) == 3:
                break
        if len(picks) < 3:
            continue
        choices = [t["name"]] + [terms[c]["name"] for c in picks]
        rng.shuffle(choices)
        items.append(
            {
                "question": f'Which Gene Ontology term is defined as: "{d}"?',
                "choices": choices,
                "answer": choices.index(t["name"]),
            }
        )
    rng.shuffle(items)
    return balance_answers(items if n_items is None else items[:n_items], rng)


# --------------------------------------------------------------------------- general MC: WordNet

WN_POS = {"noun": ("n", "1"), "verb": ("v", "2"), "adj": ("a", "3")}


def wordnet_mc(directory: Path, rng: random.Random, n_items: int | None, min_count: int = 10):
    """Gloss -> word, for common single words (sense 1 tagged >= min_count times in SemCor);
    distractors are equally common words of the same part of speech sharing no synset with the
    answer."""
    counts: dict[tuple[str, str], int] = {}
    for line in (directory / "cntlist.rev").read_text(encoding="utf-8").splitlines():
        key, sense, cnt = line.split()
        if sense != "1":
            continue
        lemma, rest = key.split("%", 1)
        ss = rest.split(":", 1)[0]
        ss = "3" if ss == "5" else ss
        counts[(lemma, ss)] = counts.get((lemma, ss), 0) + int(cnt)

    entries = []  # (pos, lemma, count, first synset offset, all synset offsets)
    for pos, (_, ss) in WN_POS.items():
        for line in (directory / f"index.{pos}").read_text(encoding="utf-8").splitlines():
            if line.startswith(" "):
                continue
            f = line.split()
            lemma, n_syn, n_ptr = f[0], int(f[2]), int(f[3])
            if not re.fullmatch(r"[a-z]{3,15}", lemma):
                continue
            offsets = f[4 + n_ptr + 2 : 4 + n_ptr + 2 + n_syn]
            c = counts.get((lemma, ss), 0)
            if c >= min_count:
                entries.append((pos, lemma, c, offsets[0], frozenset(offsets)))
    entries.sort(key=lambda e: (e[0], e[1]))

    data = {pos: (directory / f"data.{pos}").read_bytes() for pos in WN_POS}

    def gloss(pos: str, offset: str) -> str:
        b = data[pos]
        start = int(offset)
        end = b.index(b"\n", start)
        line = b[start:end].decode("utf-8")
        g = line.split(" | ", 1)[1]
        g = re.split(r';\s*"|\s"', g, maxsplit=1)[0]
        return norm_ws(g.strip(" ;"))

    by_pos: dict[str, list[tuple]] = {}
    for e in entries:
        by_pos.setdefault(e[0], []).append(e)

    # One question per synset: the most frequent of its lemmas (synonyms would repeat the gloss).
    best: dict[tuple[str, str], tuple] = {}
    for e in entries:
        k = (e[0], e[3])
        if k not in best or (-e[2], e[1]) < (-best[k][2], best[k][1]):
            best[k] = e
    items = []
    for pos, lemma, _, off, syns in entries:
        if best[(pos, off)][1] != lemma:
            continue
        g = gloss(pos, off)
        gtok = tokens(g)
        stem = lemma[: max(4, len(lemma) - 2)]
        if not (15 <= len(g) <= 200) or any(w == lemma or w.startswith(stem) for w in gtok):
            continue
        pool = [e for e in by_pos[pos] if e[1] != lemma and not (e[4] & syns) and e[1] not in gtok]
        picks = rng.sample(pool, 3)
        choices = [lemma] + [p[1] for p in picks]
        rng.shuffle(choices)
        items.append(
            {"question": f'Which word is defined as: "{g}"?', "choices": choices, "answer": choices.index(lemma)}
        )
    rng.shuffle(items)
    return balance_answers(items if n_items is None else items[:n_items], rng)


# --------------------------------------------------------------------------- README
MEASURED = "<!-- measured with the demo model; kept when the data is rebuilt -->"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def readme(out: Path, found: dict, files: list[tuple[str, int]], info: dict, full: bool) -> str:
    rows = "\n".join(
        f"| `{rel}` | {n} | {(out / rel).stat().st_size:,} | `{sha256(out / rel)[:16]}` |" for rel, n in files
    )
    total = sum((out / rel).stat().st_size for rel, _ in files)
    src_rows = "\n".join(
        f"| `{p}` | {found[p][1] or 'unknown'} | {PACKAGES[p]['what']} | {PACKAGES[p]['license']} |"
        for p in sorted(PACKAGES)
    )
    flag = " --full" if full else ""
    full_note = "; synonyms and relations added as sentences" if full else ""
    return f"""# Demo data{" (full build)" if full else ""}

Real English text for trying adept-cpt end to end without any download at run time: a
**general** domain (Jane Austen's novels), a **target domain** with very different vocabulary
(**molecular biology / biomedicine**: Gene Ontology term definitions), and two 4-way
multiple-choice benchmarks with gold answers, one per domain. Everything is derived from Debian
packages and rebuilt byte-for-byte by a deterministic script.

## Sources

| Debian package | version | content | licence |
| --- | --- | --- | --- |
{src_rows}

Attribution: Gene Ontology data (c) Gene Ontology Consortium, licensed under CC BY 4.0
(<http://geneontology.org/docs/go-citation-policy/>); the definitions here are reformatted
(term name, colon, definition; grouped by the is-a hierarchy{full_note}).
WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. THIS SOFTWARE AND
DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES,
EXPRESS OR IMPLIED (full licence: `/usr/share/doc/wordnet-base/copyright`, or the package's
`copyright` file). The Austen novels are in the public domain.

## Files

| file | documents / items | bytes | sha256 (first 16) |
| --- | --- | --- | --- |
{rows}
| **total** | | {total:,} | |

Token counts and measurements with the demo model: at the end of this file.

* `general/*.jsonl`, `domain/*.jsonl`: one `{{"text": ...}}` per line.
* Austen: paragraphs unwrapped, `_italics_` markers, chapter and volume headings and front
  matter removed; consecutive paragraphs of one chapter packed into documents of at most
  {info["max_chars"]} characters (a longer paragraph stays whole). Whole chapters go to one split:
  {info["general"]["chapters"]["train"]} train, {info["general"]["chapters"]["heldout"]} heldout,
  {info["general"]["chapters"]["probe"]} probe (`probe` is the small general-domain corpus for
  `adept importance`).
* Gene Ontology: {info["domain"]["terms_with_definition"]:,} of {info["domain"]["terms"]:,} current
  terms have a definition; each becomes a paragraph `name: definition`. Terms are ordered by a
  depth-first walk of the is-a tree (siblings by name), so a document holds related terms, and
  packed into documents of at most {info["max_chars"]} characters that never span two top-level
  branches. 5% of the documents, chosen at random, are held out.
* `benchmarks/*.jsonl`: one `{{"question": str, "choices": [4 str], "answer": index}}` per line;
  the gold answer is at each position 0-3 equally often (+-1).
* `general_mc`: "Which word is defined as: ...?" over the first WordNet sense of common single
  words (nouns, verbs, adjectives whose sense 1 is tagged at least 10 times in SemCor), skipping
  glosses that contain the word; the three distractors are common words of the same part of
  speech sharing no synset with the answer. No WordNet text is in the training corpora.
* `domain_mc`: "Which Gene Ontology term is defined as: ...?" over terms of the **held-out**
  domain documents only (never in `domain/train.jsonl`), keeping definitions that do not spell
  out the term (at most half of the term's specific words occur in the definition), which limits
  plain word copying. Distractors are sibling terms (same is-a parent) where possible, then terms
  of the same ontology with the same head word, then any term of that ontology; none occurs in
  the definition.
* Every split and sample comes from `random.Random` seeded from {SEED}.

## Regenerate

```bash
bash scripts/install_demo_sources.sh        # fetches the three Debian packages (no R needed)
python3 scripts/build_demo_data.py{flag}  # standard library only
```

`--sources DIR` (or `ADEPT_DEMO_SOURCES`) points at the folder the install script extracted into
(default `~/.cache/adept-demo-sources`); packages installed system-wide with `apt-get install` are
found too. With the package versions above the output is byte-identical (compare the sha256 column).
`--full` writes `data/demo-full/` instead: every eligible benchmark item, and GO synonyms and
relations (is a kind of, part of, regulates) added to each domain paragraph.
"""


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="build the larger variant into data/demo-full")
    ap.add_argument("--out", type=Path, help="output folder (default data/demo or data/demo-full)")
    ap.add_argument(
        "--sources",
        type=Path,
        action="append",
        default=[],
        help=f"folder holding extracted packages (default {DEFAULT_SOURCES})",
    )
    ap.add_argument("--mc-items", type=int, default=400, help="items per benchmark (ignored with --full)")
    ap.add_argument("--max-chars", type=int, default=3000, help="maximum characters per packed document")
    args = ap.parse_args(argv)

    out = args.out or REPO / "data" / ("demo-full" if args.full else "demo")
    sources = args.sources + [DEFAULT_SOURCES]
    t0 = time.monotonic()
    try:
        found = {p: locate(p, sources) for p in sorted(PACKAGES)}
    except MissingSource as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p, (_, version) in found.items():
        if version and version != PACKAGES[p]["version"]:
            print(f"warning: {p} {version} found, output was pinned against {PACKAGES[p]['version']}", file=sys.stderr)

    n_mc = None if args.full else args.mc_items
    general, ginfo = build_general(found["r-cran-janeaustenr"][0], random.Random(SEED), args.max_chars)
    domain, terms, heldout_terms, dinfo = build_domain(
        found["r-bioc-go.db"][0] / "GO.sqlite", random.Random(SEED + 1), args.max_chars, args.full
    )
    gmc = wordnet_mc(found["wordnet-base"][0], random.Random(SEED + 2), n_mc)
    dmc = domain_mc(terms, heldout_terms, random.Random(SEED + 3), n_mc)
    if n_mc is not None and (len(gmc) < n_mc or len(dmc) < n_mc):
        print(f"error: only {len(gmc)} general / {len(dmc)} domain MC items, {n_mc} asked", file=sys.stderr)
        return 1

    files = []
    for split in ("train", "heldout", "probe"):
        rel = f"general/{split}.jsonl"
        write_jsonl(out / rel, [{"text": t} for t in general[split]])
        files.append((rel, len(general[split])))
    for split in ("train", "heldout"):
        rel = f"domain/{split}.jsonl"
        write_jsonl(out / rel, [{"text": t} for t in domain[split]])
        files.append((rel, len(domain[split])))
    for name, items in (("general_mc", gmc), ("domain_mc", dmc)):
        rel = f"benchmarks/{name}.jsonl"
        write_jsonl(out / rel, items)
        files.append((rel, len(items)))
    info = {"general": ginfo, "domain": dinfo, "max_chars": args.max_chars}
    text = readme(out, found, files, info, args.full)
    previous = out / "README.md"
    if previous.is_file() and MEASURED in previous.read_text(encoding="utf-8"):
        # Numbers measured with the tokenizer and model (not derivable from the packages) are kept.
        text = text.rstrip("\n") + "\n\n" + MEASURED + previous.read_text(encoding="utf-8").split(MEASURED, 1)[1]
    previous.write_text(text, encoding="utf-8", newline="\n")

    for rel, n in files:
        print(f"{rel:32s} {n:6d} items {(out / rel).stat().st_size:12,d} bytes")
    print(f"wrote {out} in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
