"""Checks the PDF and HTML invoices of one period of a warehouse against the invoice tables (issue #14).

Usage: documents_check.py WAREHOUSE PERIOD

The tables are read with DuckDB, independently of cspbill; numbers are formatted here with Python's own decimal
formatting (half-even) and the CLDR separators of each locale, then looked for where the documents print them:
- every invoice line's amount, shown quantity and unit price on its row of the PDF text (pdftotext -layout) and
  of the HTML table; subtotal, tax and total; on enterprise invoices each line section's count of resource rows;
- page counts per template (trial 1, smb at most 2, enterprise a summary, contents and lines before its
  sections) and a "Page k of N" footer on every page (pdfinfo);
- pages rendered to PNG (pdftoppm) have the A4 size and are not blank (decoded here with zlib);
- the HTML opens in headless Chromium without console messages (a canary page with a console.error proves
  the detector sees them).
Prints `ok: ...` and exits 0, or prints every failure and exits 1.
"""

import decimal
import glob
import html as htmlmod
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

D = decimal.Decimal
MINOR = {"JPY": 0, "KRW": 0, "KWD": 3, "BHD": 3, "JOD": 3, "OMR": 3, "TND": 3}
QUANTITY_MAX_PLACES = 4
UNIT_PRICE_EXTRA = 2
failures = []


def fail(msg):
    failures.append(msg)


def fmt(value, places, locale):
    """`value` rounded half-even to `places` decimals, grouped by thousands, with the locale's marks."""
    q = D(value).quantize(D(1).scaleb(-places), rounding=decimal.ROUND_HALF_EVEN)
    text = f"{q:,.{places}f}"
    group, mark = {"de-DE": (".", ","), "nl-NL": (".", ","), "fr-FR": ("\u202f", ",")}.get(locale, (",", "."))
    return text.replace(",", "\0").replace(".", mark).replace("\0", group)


def places_of(d):
    exp = D(d).normalize().as_tuple().exponent
    return max(0, -exp)


def png_size_and_ink(path):
    """(width, height, share of dark pixels) of an 8-bit PNG (grey or RGB), decoded here with zlib."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, idat = 8, b""
    w = h = depth = ctype = None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    bpp = {0: 1, 2: 3, 4: 2, 6: 4}.get(ctype)
    assert depth == 8 and bpp, f"{path}: expected an 8-bit PNG, got depth {depth} colour type {ctype}"
    raw = zlib.decompress(idat)
    stride = w * bpp
    prev = bytearray(stride)
    dark = 0
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pr = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pr) & 255
        channels = min(bpp, 3)
        dark += sum(1 for x in range(0, stride, bpp) if min(line[x:x + channels]) < 160)
        prev = line
    return w, h, dark / (w * h)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0", "--dump-dom"]


def chromium(path, profile):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return None
    out = run([exe] + CHROMIUM_FLAGS + [f"--user-data-dir={profile}", "file://" + os.path.abspath(path)], timeout=120)
    console = [l for l in out.stderr.splitlines() if "CONSOLE" in l]
    return out.returncode, out.stdout, console


def main():
    wh, period = sys.argv[1], sys.argv[2]
    import duckdb
    con = duckdb.connect()
    pq = lambda t, zone="marts": f"read_parquet('{wh}/{zone}/{t}/period={period}/*.parquet')"
    invoices = con.sql(f"""select i.invoice_number, i.customer_id, i.currency, i.template, i.subtotal, i.tax, i.total,
                                  coalesce(c.locale, 'en-US') as locale
                           from {pq('fct_invoices')} i left join {pq('stg_customers', 'staged')} c using (customer_id)
                           order by 1""").fetchall()
    lines = con.sql(f"""select invoice_number, line_no, line_type, quantity, unit, unit_price, amount, invoice_line_id
                        from {pq('fct_invoice_lines')} order by 1, 2""").fetchall()
    detail = dict(con.sql(f"select invoice_line_id, count(*) from {pq('fct_invoice_detail')} group by 1").fetchall())
    if not invoices:
        fail(f"no invoices in period {period}")
    by_invoice = {}
    for l in lines:
        by_invoice.setdefault(l[0], []).append(l)
    exports = f"{wh}/marts/exports/period={period}"
    tmp = tempfile.mkdtemp(prefix="doccheck-")
    have_chromium = shutil.which("chromium") is not None
    if os.environ.get("CI") == "true" and not have_chromium:
        fail("CI=true but chromium is not installed (scripts/test.sh installs it)")
    if have_chromium:
        canary = os.path.join(tmp, "canary.html")
        open(canary, "w").write("<!DOCTYPE html><html><body><script>console.error('canary')</script></body></html>")
        r = chromium(canary, os.path.join(tmp, "profile-canary"))
        if not r[2]:
            fail("the console detector missed the canary page's console.error; cannot trust the HTML check")
    pages_total = 0
    for number, customer, ccy, template, subtotal, tax, total, locale in invoices:
        dp = MINOR.get(ccy, 2)
        mine = by_invoice.get(number, [])
        pdfs = glob.glob(f"{exports}/customer=*/{number}.pdf")
        if len(pdfs) != 1:
            fail(f"{number}: expected one PDF, found {pdfs}")
            continue
        pdf = pdfs[0]
        text = run(["pdftotext", "-layout", pdf, "-"]).stdout
        info = run(["pdfinfo", pdf]).stdout
        m = re.search(r"^Pages:\s+(\d+)", info, re.M)
        pages = int(m.group(1)) if m else 0
        pages_total += pages
        # Page-count limits per template.
        if template == "trial" and pages != 1:
            fail(f"{number} (trial): {pages} pages, the trial statement is one page")
        if template == "smb" and not 1 <= pages <= 2:
            fail(f"{number} (smb): {pages} pages, at most two")
        sections = sorted({l[7] for l in mine if detail.get(l[7], 0) > 0})
        if template == "enterprise" and pages < 3 + len(sections):
            fail(f"{number} (enterprise): {pages} pages for {len(sections)} line sections")
        for k in range(1, pages + 1):
            if f"Page {k} of {pages}" not in text:
                fail(f"{number}: no footer 'Page {k} of {pages}'")
        # Totals.
        for label, v in (("Subtotal", subtotal), ("Tax", tax)):
            if not re.search(rf"{label}\s+{re.escape(fmt(v, dp, locale))}\s*$", text, re.M):
                fail(f"{number}: {label} {fmt(v, dp, locale)} not printed")
        tot = fmt(total, dp, locale)
        tot_text = f"{ccy} {tot}" if locale in ("en-US", "en-GB", "ja-JP") else f"{tot} {ccy}"
        if not re.search(rf"Total\s+{re.escape(tot_text)}\s*$", text, re.M):
            fail(f"{number}: Total {tot_text} not printed")
        # Lines: each row starts with its number and ends with its amount; quantity and unit price on the row.
        shown = [D(l[3]) for l in mine if l[3] is not None and ((l[4] or "") != "" or l[5] is not None)]
        qp = min(QUANTITY_MAX_PLACES, max([places_of(q) for q in shown], default=0))
        html_text = open(pdf[:-4] + ".html", encoding="utf-8").read()
        for (_, no, ltype, qty, unit, uprice, amount, lid) in mine:
            row = re.search(rf"^\s*{no}\s\s+\S.*$", text, re.M)
            if row is None:
                fail(f"{number} line {no}: no row in the PDF")
                continue
            cells = row.group(0).split()
            want_amount = fmt(amount, dp, locale)
            if cells[-1] != want_amount:
                fail(f"{number} line {no}: PDF amount {cells[-1]!r}, table {want_amount!r}")
            has_qty = (unit or "") != "" or uprice is not None
            if uprice is not None:
                want = fmt(uprice, dp + UNIT_PRICE_EXTRA, locale)
                if want not in cells[:-1]:
                    fail(f"{number} line {no}: unit price {want!r} not on the PDF row {row.group(0)!r}")
            if has_qty and qty is not None:
                want = fmt(qty, qp, locale)
                if want not in cells[1:-1]:
                    fail(f"{number} line {no}: quantity {want!r} not on the PDF row {row.group(0)!r}")
            # The HTML row: its last cell is the amount.
            hrow = re.search(rf'<tr><td class="n">{no}</td>(.*?)</tr>', html_text)
            if hrow is None:
                fail(f"{number} line {no}: no row in the HTML")
            else:
                hcells = re.findall(r"<td[^>]*>(.*?)</td>", hrow.group(1))
                if htmlmod.unescape(hcells[-1]) != want_amount:
                    fail(f"{number} line {no}: HTML amount {hcells[-1]!r}, table {want_amount!r}")
            if template == "enterprise" and detail.get(lid, 0) > 0:
                n = detail[lid]
                if not re.search(rf"Line {no}: .*\n(.*\n)?.*· {n} resource rows ·", text):
                    fail(f"{number} line {no}: section with {n} resource rows not found")
                if f"· {n} resource rows ·" not in html_text:
                    fail(f"{number} line {no}: HTML section with {n} resource rows not found")
        if f"Subtotal</td><td class=\"n\">{fmt(subtotal, dp, locale)}</td>" not in html_text:
            fail(f"{number}: HTML subtotal {fmt(subtotal, dp, locale)} not found")
        # Pages as images: A4 at 30 dpi (248 × 351 px), not blank; the first and the last page.
        stem = os.path.join(tmp, number)
        for k in sorted({1, pages}):
            r = run(["pdftoppm", "-r", "30", "-gray", "-png", "-f", str(k), "-l", str(k), pdf, stem])
            pngs = sorted(glob.glob(stem + "*.png"))
            if r.returncode != 0 or not pngs:
                fail(f"{number} page {k}: pdftoppm failed: {r.stderr}")
                continue
            w, h, ink = png_size_and_ink(pngs[-1])
            if (w, h) not in ((248, 351), (249, 351)):  # 595.28 pt × 30/72 = 248.03: poppler rounds up
                fail(f"{number} page {k}: rendered {w}×{h}, A4 at 30 dpi is 248–249 × 351")
            if not 0.002 < ink < 0.5:
                fail(f"{number} page {k}: {ink:.4f} of the page is ink (blank or black page)")
            for p in pngs:
                os.remove(p)
        # The HTML in headless Chromium: it loads, shows the invoice, logs nothing to the console.
        if have_chromium:
            rc, dom, console = chromium(pdf[:-4] + ".html", os.path.join(tmp, "profile-" + number))
            if rc != 0 or number not in dom:
                fail(f"{number}: chromium did not render the HTML (exit {rc})")
            if console:
                fail(f"{number}: console messages in chromium: {console[:3]}")
    shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"ok: {len(invoices)} invoices, {len(lines)} lines, {pages_total} PDF pages checked")


if __name__ == "__main__":
    main()
