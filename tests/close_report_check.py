"""Checks the close report as Chromium rendered it, and the run-health metrics file, against independent truth:
the marts and staged tables read with DuckDB (sums and ratios recomputed here, in SQL and Python Decimal), and the
run manifest. Run by tests/close_report.rs:

    python tests/close_report_check.py DOM.html REPORT.json WAREHOUSE PERIOD MODE METRICS.prom

Prints one line per problem and exits 1 if there is any.
"""
import json
import os
import sys
from decimal import ROUND_HALF_EVEN, Decimal
from html.parser import HTMLParser

import duckdb
from prometheus_client.parser import text_string_to_metric_families

DOM, REPORT, WH, PERIOD, MODE, METRICS = sys.argv[1:7]
problems = []


def check(ok, what):
    if not ok:
        problems.append(what)


# ISO 4217 minor units of the sample's currencies (written out here, independently of the code's table).
MINOR = {"EUR": 2, "GBP": 2, "USD": 2, "JPY": 0}


def money(d, ccy):
    """The page's display of an amount: the minor unit, half-even, thousands separated, code first."""
    q = Decimal(d).quantize(Decimal(1).scaleb(-MINOR[ccy]), rounding=ROUND_HALF_EVEN)
    sign = "-" if q < 0 else ""
    return f"{ccy} {sign}{abs(q):,.{MINOR[ccy]}f}"


def q6(d):
    return Decimal(d).quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN)


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children, self.text = tag, dict(attrs), parent, [], ""

    def all_text(self):
        return self.text + "".join(c.all_text() for c in self.children)

    def find(self, pred):
        out = []
        for c in self.children:
            if pred(c):
                out.append(c)
            out.extend(c.find(pred))
        return out


VOID = {"meta", "br", "img", "input", "link", "hr", "col", "area", "base", "source", "wbr"}


class Tree(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", [], None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.children.append(n)
        if tag not in VOID:
            self.cur = n

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, attrs, self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        # Text after a child belongs to the parent's text; order does not matter for the checks.
        self.cur.text += data


t = Tree()
t.feed(open(DOM, encoding="utf-8").read())
root = t.root


def by_id(i):
    found = root.find(lambda n: n.attrs.get("id") == i)
    check(len(found) == 1, f"expected one element with id {i}, found {len(found)}")
    return found[0] if found else Node("missing", [], None)


def rows(section, attr):
    return {r.attrs[attr]: r for r in section.find(lambda n: n.tag == "tr" and attr in n.attrs)}


def rows_multi(section, *attrs):
    return {tuple(r.attrs[a] for a in attrs): r for r in section.find(lambda n: n.tag == "tr" and all(a in n.attrs for a in attrs))}


def cell(row, field):
    c = row.find(lambda n: n.tag == "td" and n.attrs.get("data-field") == field)
    check(len(c) == 1, f"row {row.attrs} has {len(c)} cells `{field}`")
    return c[0] if c else Node("missing", [], None)


con = duckdb.connect()


def table(zone, name):
    return f"read_parquet('{WH}/{zone}/{name}/period={PERIOD}/*.parquet')"


def sql(q):
    return con.sql(q).fetchall()


# --- the browser saw a complete, offline page -------------------------------------------------------------------
rep = json.load(open(REPORT))
check(rep["console_errors"] == [], f"console errors: {rep['console_errors']}")
check(rep["page_errors"] == [], f"page errors: {rep['page_errors']}")
check(rep["failed_requests"] == [], f"failed requests: {rep['failed_requests']}")
check(len(rep["requests"]) == 1 and rep["requests"][0].startswith("file://") and rep["requests"][0].endswith("/close.html"),
      f"the page made requests besides itself: {rep['requests']}")
check(not root.find(lambda n: n.tag in ("script", "link", "img", "iframe", "object", "embed")), "the page has scripts or external resources")
body = root.find(lambda n: n.tag == "body")[0]
check(body.attrs.get("data-period") == PERIOD, f"body period {body.attrs.get('data-period')}")
want_status = "final" if MODE == "close" else "provisional"
check(body.attrs.get("data-status") == want_status, f"status {body.attrs.get('data-status')} for mode {MODE}")
banner = by_id("status")
check(("FINAL" if MODE == "close" else "PROVISIONAL") in banner.all_text(), f"banner: {banner.all_text()}")

# --- totals per currency against fct_invoices ------------------------------------------------------------------
totals = rows(by_id("totals"), "data-currency")
want = sql(f"select currency, count(*), sum(subtotal), sum(cost), sum(margin) from {table('marts', 'fct_invoices')} group by currency")
check(len(want) > 0 and set(totals) == {w[0] for w in want}, f"currencies on the page {sorted(totals)} vs marts {[w[0] for w in want]}")
for ccy, n, billed, cost, margin in want:
    r = totals.get(ccy)
    if r is None:
        continue
    check(cell(r, "invoices").all_text().strip() == str(n), f"{ccy}: invoices {cell(r, 'invoices').all_text()} vs {n}")
    for field, v in (("billed", billed), ("cost", cost), ("margin", margin)):
        c = cell(r, field)
        check(c.all_text().strip() == money(v, ccy), f"{ccy} {field}: page shows `{c.all_text().strip()}`, marts give {money(v, ccy)} ({v})")
        check(Decimal(c.attrs.get("data-exact", "nan")) == v, f"{ccy} {field}: data-exact {c.attrs.get('data-exact')} vs {v}")

# --- invoices and their export links ---------------------------------------------------------------------------
page_dir = os.path.dirname(os.path.join(WH, "marts/reports", f"period={PERIOD}", "close.html"))
inv = rows(by_id("exports"), "data-invoice")
want = sql(f"select invoice_number, currency, subtotal, customer_id from {table('marts', 'fct_invoices')}")
check(set(inv) == {w[0] for w in want}, f"invoices on the page {sorted(inv)} vs marts {sorted(w[0] for w in want)}")
for number, ccy, subtotal, customer in want:
    r = inv.get(number)
    if r is None:
        continue
    check(cell(r, "subtotal").all_text().strip() == money(subtotal, ccy), f"{number}: subtotal {cell(r, 'subtotal').all_text()} vs {money(subtotal, ccy)}")
    links = [a.attrs["href"] for a in r.find(lambda n: n.tag == "a")]
    exts = sorted(os.path.basename(h).split(".", 1)[1] for h in links)
    # Every file the warehouse holds for this invoice, and nothing else (read from the folder, not the page).
    folder = os.path.join(WH, "marts", "exports", f"period={PERIOD}", f"customer={customer}")
    on_disk = sorted(f.split(".", 1)[1] for f in os.listdir(folder) if f.split(".", 1)[0] == number) if os.path.isdir(folder) else []
    check(exts == on_disk and {"csv", "xlsx"} <= set(exts), f"{number}: export links {links} vs files {on_disk}")
    for h in links:
        check(f"customer={customer}/" in h and os.path.isfile(os.path.normpath(os.path.join(page_dir, h))), f"{number}: link {h} does not reach a file")

# --- run checks: one green row per check of the manifest -------------------------------------------------------
manifest = json.load(open(sorted(
    (os.path.join(WH, "_runs", f) for f in os.listdir(os.path.join(WH, "_runs"))), key=os.path.getmtime)[-1]))
check_rows = by_id("checks").find(lambda n: n.tag == "tr" and "data-check" in n.attrs)
check([r.attrs["data-check"] for r in check_rows] == [c["name"] for c in manifest["checks"]], "check rows differ from the manifest's checks")
check(all(r.attrs.get("class") == "pass" for r in check_rows) and len(check_rows) > 10, "a check row is not green")
n = len(manifest["checks"])
check(f"{n} of {n} hold" in by_id("checks-summary").all_text(), f"checks summary: {by_id('checks-summary').all_text()}")

# --- reconciliation: Microsoft's Σ Subtotal per customer from the staged invoice lines -------------------------
recon = rows(by_id("reconciliation"), "data-customer")
want = dict(sql(f"select customer_id, sum(subtotal) from {table('staged', 'stg_pc_invoice_lines')} group by customer_id"))
charged = {c: (li, du) for c, li, du in sql(
    f"select customer_id, sum(cost) filter (where source_kind = 'invoice_line'), sum(cost) filter (where source_kind = 'daily_usage') "
    f"from {table('int', 'int_charges')} group by customer_id")}
for c in charged:
    want.setdefault(c, Decimal(0))  # charged, but not on Microsoft's invoice file
check(len(want) > 0 and set(recon) == set(want), f"reconciled customers {sorted(recon)} vs staged and charged {sorted(want)}")
for cust, subtotal in want.items():
    r = recon.get(cust)
    if r is None:
        continue
    check(Decimal(cell(r, "microsoft").attrs["data-exact"]) == subtotal, f"{cust}: Microsoft subtotal {cell(r, 'microsoft').attrs['data-exact']} vs {subtotal}")
    li, du = charged.get(cust, (None, None))
    diff = (li or 0) + (du or 0) - subtotal
    check(Decimal(cell(r, "difference").attrs["data-exact"]) == diff, f"{cust}: difference {cell(r, 'difference').attrs['data-exact']} vs {diff}")
    check(r.attrs.get("class") == "pass" and Decimal(cell(r, "unexplained").attrs["data-exact"]) == 0, f"{cust}: reconciliation not explained")

# --- margin per customer: Σ margin / Σ price of the priced rated charges ----------------------------------------
margins = rows_multi(by_id("margins"), "data-customer", "data-currency")
want = sql(f"select customer_id, invoice_currency, sum(margin), sum(price) from {table('int', 'int_charges_rated')} "
           f"where status = 'priced' group by all")
check(len(want) > 0 and set(margins) == {(w[0], w[1]) for w in want}, "customers in the margin table differ from the rated charges")
by_manifest = {(m["customer_id"], m["currency"]): m for m in manifest["control_totals"]["margin_by_customer"]}
for cust, ccy, margin, price in want:
    r = margins.get((cust, ccy))
    if r is None or price == 0:
        continue
    realised = q6(margin / price)
    check(Decimal(cell(r, "realised").attrs["data-exact"]) == realised, f"{cust}: realised margin {cell(r, 'realised').attrs['data-exact']} vs {realised}")
    check(Decimal(by_manifest[(cust, ccy)]["realised_margin"]) == realised, f"{cust}: manifest realised margin vs {realised}")
chart = by_id("margin-chart")
svg = chart.find(lambda n: n.tag == "svg")
check(len(svg) == 1 and len(svg[0].find(lambda n: n.tag == "rect")) >= len(want), "the margin chart has no bars")

# --- spend by day: one chart per customer with priced daily usage -------------------------------------------------
figs = by_id("spend").find(lambda n: n.tag == "figure")
want = {c for (c,) in sql(f"select distinct customer_id from {table('int', 'int_charges_rated')} "
                          f"where status = 'priced' and source_kind = 'daily_usage' and price <> 0")}
check({f.attrs.get("data-customer") for f in figs} == want and len(want) > 0, f"spend charts for {[f.attrs.get('data-customer') for f in figs]} vs {sorted(want)}")
for f in figs:
    check(len(f.find(lambda n: n.tag == "svg")) == 1 and len(f.find(lambda n: n.tag == "polyline")) >= 1, f"spend chart {f.attrs} has no line")
budgets = {c for (c,) in sql(f"select customer_id from {table('staged', 'stg_customers')} where monthly_budget is not null")}
for f in figs:
    if f.attrs.get("data-customer") in budgets:
        check("budget" in f.find(lambda n: n.tag == "figcaption")[0].all_text() and len(f.find(lambda n: n.tag == "polyline")) > 2,
              f"spend chart {f.attrs} has no budget line")

# --- anomalies, tag compliance, unpriced, rejects -----------------------------------------------------------------
(fired,) = sql(f"select count(*) from {table('marts', 'rpt_anomalies')} where severity <> 'skipped'")[0]
shown = by_id("anomalies").find(lambda n: n.tag == "tr" and "data-severity" in n.attrs)
check(len(shown) == min(10, fired) and fired > 0, f"{len(shown)} anomalies shown of {fired}")
check([r.attrs["data-severity"] for r in shown] == sorted((r.attrs["data-severity"] for r in shown), key=lambda s: s != "critical"), "anomalies not worst first")

comp = rows(by_id("tag-compliance"), "data-customer")
want = sql(f"select customer_id, sum(tag_allocated_cost), sum(azure_cost) from {table('int', 'int_tag_compliance')} group by customer_id")
check(len(want) > 0 and set(comp) == {w[0] for w in want}, "customers in the tag compliance table differ from int_tag_compliance")
by_manifest = {c["customer_id"]: c for c in manifest["control_totals"]["tag_compliance_by_customer"]}
for cust, tagged, cost in want:
    if cost == 0 or cust not in comp:
        continue
    check(Decimal(cell(comp[cust], "compliance").attrs["data-exact"]) == q6(tagged / cost), f"{cust}: compliance vs {q6(tagged / cost)}")
    check(Decimal(by_manifest[cust]["compliance"]) == q6(tagged / cost), f"{cust}: manifest compliance vs {q6(tagged / cost)}")

want = sql(f"select customer_id, unpriced_reason, count(*) from {table('int', 'int_charges_rated')} where status <> 'priced' group by all")
unpriced = sum(w[2] for w in want)
up_rows = by_id("unpriced").find(lambda n: n.tag == "tr" and "data-customer" in n.attrs)
shown = sorted((r.attrs["data-customer"], r.find(lambda n: n.tag == "td")[1].all_text(), int(cell(r, "parts").all_text())) for r in up_rows)
check(shown == sorted(want), f"unpriced parts on the page {shown} vs rated {sorted(want)}")
want = sql(f"select source_file, reason_code, count(*) from (select * from {table('rejects', 'rejects_pc_daily_usage')} "
           f"union all select * from {table('rejects', 'rejects_pc_invoice_lines')}) group by all")
rejected = sum(w[2] for w in want)
rj_rows = by_id("rejects").find(lambda n: n.tag == "tr" and "data-reason" in n.attrs)
shown = sorted((r.attrs["data-file"], r.attrs["data-reason"], int(cell(r, "rows").all_text())) for r in rj_rows)
check(shown == sorted(want), f"rejected rows on the page {shown} vs rejects {sorted(want)}")
by_id("late-data")

# --- the metrics file, parsed by the Prometheus client's own parser, against the manifest -------------------------
samples = {}
for fam in text_string_to_metric_families(open(METRICS).read()):
    check(fam.name.startswith("cspbill_"), f"metric {fam.name} outside the cspbill_ namespace")
    for s in fam.samples:
        samples[(s.name, tuple(sorted(s.labels.items())))] = s.value


def metric(name, **labels):
    key = (name, tuple(sorted(dict(labels, period=PERIOD).items())))
    check(key in samples, f"metric {key} missing")
    return samples.get(key)


check(metric("cspbill_run_success", mode=MODE) == 1, "run_success")
from datetime import datetime
start = datetime.fromisoformat(manifest["started_at"])
end = datetime.fromisoformat(manifest["finished_at"])
check(abs(metric("cspbill_run_duration_seconds", mode=MODE) - (end - start).total_seconds()) < 0.0015, "run duration vs manifest")
check(abs(metric("cspbill_last_success_timestamp_seconds", mode=MODE) - end.timestamp()) < 0.0015, "last success vs manifest")
check(metric("cspbill_run_info", mode=MODE, run_id=manifest["run_id"], version=manifest["cspbill_version"]) == 1, "run_info")
kinds = {"DailyUsage": "daily_usage", "InvoiceLines": "invoice_lines"}
for field, name in (("rows_in", "cspbill_rows_ingested"), ("staged", "cspbill_rows_staged"), ("rejected", "cspbill_rows_rejected"), ("duplicates", "cspbill_rows_duplicate")):
    for kind, source in kinds.items():
        n = sum(f[field] for f in manifest["inputs"] if f["kind"] == kind)
        check(metric(name, source=source) == n, f"{name} {source} vs manifest {n}")
staged = sum(f["staged"] for f in manifest["inputs"])
rej = sum(f["rejected"] for f in manifest["inputs"])
ratio = Decimal(1) if staged + rej == 0 else (Decimal(staged) / Decimal(staged + rej)).quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN)
check(metric("cspbill_ingest_success_ratio") == float(ratio), f"ingest success ratio vs {ratio}")
check(metric("cspbill_rows_rejected", source="daily_usage") + metric("cspbill_rows_rejected", source="invoice_lines") == rejected, "rejected rows vs rejects tables")
check(metric("cspbill_unpriced_parts") == manifest["control_totals"]["unpriced_parts"] == unpriced, "unpriced parts")
check(metric("cspbill_invoices") == manifest["control_totals"]["invoices"], "invoices")
check(metric("cspbill_checks", result="passed") == len(manifest["checks"]) and metric("cspbill_checks", result="failed") == 0, "checks")
for sev in ("critical", "warning", "skipped"):
    check(metric("cspbill_anomalies", severity=sev) == manifest["control_totals"]["anomalies"][sev], f"anomalies {sev}")
judged = [c for c in manifest["control_totals"]["tag_compliance_by_customer"] if c["judged"]]
check(len(judged) > 0, "no customer judged for tag compliance")
for c in judged:
    check(metric("cspbill_tag_compliance_ratio", customer=c["customer_id"], customer_name=c["customer_name"]) == float(c["compliance"]), f"tag compliance {c['customer_id']}")
tc = [k for k in samples if k[0] == "cspbill_tag_compliance_ratio"]
check(len(tc) == len(judged), "tag compliance for customers not judged")
for m in manifest["control_totals"]["margin_by_customer"]:
    labels = dict(customer=m["customer_id"], customer_name=m["customer_name"], currency=m["currency"])
    check(metric("cspbill_margin_ratio", **labels) == float(m["realised_margin"]), f"margin {m['customer_id']}")
    if m["target_margin"] is not None:
        check(metric("cspbill_margin_target_ratio", **labels) == float(m["target_margin"]), f"target {m['customer_id']}")
        check(metric("cspbill_margin_variance_points", **labels) == float(m["variance_points"]), f"variance {m['customer_id']}")
        want_pts = ((Decimal(m["margin"]) / Decimal(m["priced_spend"]) - Decimal(m["target_margin"])) * 100).quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN)
        check(Decimal(m["variance_points"]) == want_pts, f"variance points {m['customer_id']}: {m['variance_points']} vs {want_pts}")

for p in problems:
    print(p)
sys.exit(1 if problems else 0)
