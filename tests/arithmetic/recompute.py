#!/usr/bin/env python3
"""Recomputes a few sample_data invoices from the raw inputs with Python's decimal module, independently of
cspbill's code: DESIGN §5 read as a specification, nothing imported from the repository. The results are the
expected values in tests/arithmetic.rs; tests/ARITHMETIC.md walks through them by hand.

    python3 tests/arithmetic/recompute.py            # prints every line of the chosen invoices
"""
import csv, fnmatch, glob, json, os, re, sys
from collections import defaultdict
from datetime import date
from decimal import Decimal as D, ROUND_HALF_EVEN, getcontext

getcontext().prec = 60
ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "sample_data")
Q18 = D(1).scaleb(-18)


def r18(x):
    """Polars Decimal(38, 18): every product and quotient rounded half-even to 18 places."""
    return x.quantize(Q18, rounding=ROUND_HALF_EVEN)


def mul(*xs):
    out = xs[0]
    for x in xs[1:]:
        out = r18(out * x)
    return out


def rows(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def mdy(s):
    m, d, y = s.split("/")
    return date(int(y), int(m), int(d))


def iso(s):
    return date.fromisoformat(s[:10])


def dec(s):
    s = (s or "").strip()
    if not s:
        return None
    return D(s[:-1]) / 100 if s.endswith("%") else D(s)


ref = lambda name: rows(os.path.join(ROOT, "reference", name))
customers = {c["customer_id"]: c for c in ref("customers.csv")}
cards = ref("rate_cards.csv")
tag_rules = ref("tag_rules.csv")
units = {u["unit_id"]: u for u in ref("org_units.csv")}
fx = ref("fx_rates.csv")
psa = ref("psa_time_entries.csv")
manual = ref("manual_lines.csv")
PERIOD_END = date(2025, 6, 30)


def family(r, daily):
    pub = (r.get("PublisherName") or "").strip()
    if pub and not pub.lower().startswith("microsoft"):
        return "marketplace"
    if daily:
        return "azure_usage"
    t = (r["TermAndBillingCycle"] + " " + r["SkuName"]).lower()
    if "reservation" in t or "reserved" in t:
        return "reservation"
    if "savings plan" in (r["ProductName"] + " " + r["SkuName"] + " " + r["TermAndBillingCycle"]).lower():
        return "savings_plan"
    if r["ProductId"].startswith("DZH318Z0"):
        return "azure_usage"
    if r["ProductId"].startswith("DG7GMGF0") or "perpetual" in r["TermAndBillingCycle"].lower():
        return "software"
    return "license"


def charges():
    """int_charges of the snapshot: every daily-usage row, and the invoice lines that are not metered
    consumption (daily usage exists, so metered invoice lines are only a control total)."""
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "inputs/2025-06/*Usage*.csv"))):
        for i, r in enumerate(rows(path)):
            eup, up = D(r["EffectiveUnitPrice"]), D(r["UnitPrice"])
            f = D(-1) if eup < 0 else D(1)
            q, rate = D(r["Quantity"]), D(r["PCToBCExchangeRate"] or "1")
            out.append(dict(kind="usage", customer=r["CustomerId"], sub=r["EntitlementId"], rg=r["ResourceGroup"],
                            tags=r["Tags"], family=family(r, True), product=r["ProductId"], sku=r["SkuId"].zfill(4),
                            mcat=r["MeterCategory"], msub=r["MeterSubCategory"], date=mdy(r["UsageDate"]),
                            bc=r["BillingCurrency"], pc=r["PricingCurrency"], rate=rate, q=q, f=f,
                            cost=D(r["BillingPreTaxTotal"]), list=mul(up, q, rate, f), credit=False, name=r["ProductName"]))
    for path in sorted(glob.glob(os.path.join(ROOT, "inputs/2025-06/*InvoiceRecon*.csv"))):
        for r in rows(path):
            fam = family(r, False)
            credit = r["ChargeType"].lower() == "customercredit" or r["CreditReasonCode"].strip() != ""
            metered = fam == "azure_usage" or r["MeterDescription"].strip() != ""
            if metered and not credit:
                continue  # control total
            eup, up = D(r["EffectiveUnitPrice"]), D(r["UnitPrice"])
            q, rate = D(r["BillableQuantity"]), D(r["PCToBCExchangeRate"] or "1")
            sign = D(-1) if eup < 0 else D(1)
            promo = re.search(r"(?i)(\d+(?:\.\d+)?)\s*%\s*Promotional\s+Discount", r["PriceAdjustmentDescription"])
            if fam == "azure_usage":
                f = sign
            elif up == 0:
                f = sign
            else:
                f = r18(eup / up)
                if promo:
                    f = r18(f / (1 - D(promo.group(1)) / 100))
            out.append(dict(kind="invoice", customer=r["CustomerId"], sub=r["SubscriptionId"], rg="", tags="",
                            family=fam, product=r["ProductId"], sku=r["SkuId"].zfill(4), mcat="", msub="",
                            date=mdy(r["ChargeStartDate"]), bc=r["Currency"], pc=r["PricingCurrency"], rate=rate, q=q,
                            f=f, cost=D(r["Subtotal"]), list=mul(up, q, rate, f), credit=credit, name=r["SkuName"]))
    return out


def tag_parts(c):
    """Tag rules (DESIGN §5 Allocate): lowest priority among matching rules wins; splits by share, the last
    part takes the remainder. Returns [(share, unit_id or None, rule_id)]."""
    tags = {}
    if c["tags"]:
        try:
            tags = json.loads(c["tags"])
        except ValueError:
            tags = {}
    by_rule = defaultdict(list)
    for t in tag_rules:
        by_rule[t["rule_id"]].append(t)
    best = None
    for rid, parts in by_rule.items():
        t = parts[0]
        if t["customer_id"] and t["customer_id"].lower() != c["customer"].lower():
            continue
        if t["subscription_id"] and t["subscription_id"].lower() != c["sub"].lower():
            continue
        if t["resource_group"] and not (c["kind"] == "usage" and fnmatch.fnmatch(c["rg"].lower(), t["resource_group"].lower())):
            continue
        if t["tag_key"]:
            vals = [v for k, v in tags.items() if k.lower() == t["tag_key"].lower()]
            if c["kind"] != "usage" or not vals:
                continue
            if t["tag_value"] and not any(fnmatch.fnmatchcase(str(v), t["tag_value"]) for v in vals):
                continue
        p = int(t["priority"])
        if best is None or p < best[0]:
            best = (p, rid)
    if best is None:
        return [(D(1), None, None, None)]
    parts = by_rule[best[1]]
    out, given = [], D(0)
    for k, t in enumerate(parts):
        share = dec(t["share"]) if t["share"] else None
        last = k == len(parts) - 1
        out.append((share if share is not None else D(1), t["target_unit_id"] or None, best[1], last))
    return out


def split(c):
    parts = tag_parts(c)
    if len(parts) == 1:
        return [dict(c, unit=parts[0][1])]
    out = []
    acc = {k: D(0) for k in ("q", "cost", "list")}
    for share, unit, rid, last in parts:
        p = dict(c, unit=unit)
        for k in acc:
            if last:
                p[k] = c[k] - acc[k]
            else:
                p[k] = mul(c[k], share)
                acc[k] += p[k]
        out.append(p)
    return out


SCORE = ["customer_id", "product_id", "meter_subcategory", "meter_category", "product_family", "template"]


def rule_for(p, template):
    cands = []
    for r in cards:
        named = lambda k: r[k].strip() not in ("", "*")
        if named("customer_id") and r["customer_id"].lower() != p["customer"].lower():
            continue
        if named("template") and r["template"].lower() != template:
            continue
        if named("product_family") and r["product_family"] != p["family"]:
            continue
        if named("meter_category") and r["meter_category"].lower() != p["mcat"].lower():
            continue
        if named("meter_subcategory") and r["meter_subcategory"].lower() != p["msub"].lower():
            continue
        if named("product_id"):
            want = r["product_id"]
            have = p["product"] + (":" + p["sku"] if ":" in want else "")
            if want.lower() != have.lower():
                continue
        if r["valid_from"] and p["date"] < iso(r["valid_from"]):
            continue
        if r["valid_to"] and p["date"] >= iso(r["valid_to"]):
            continue
        score = tuple((2 if k == "product_id" and ":" in r[k] else 1) if named(k) else 0 for k in SCORE)
        cands.append((score, r))
    cands.sort(key=lambda x: x[0], reverse=True)
    assert len(cands) == 1 or cands[0][0] != cands[1][0], ("tie", p)
    return cands[0][1]


def market(frm, to, day):
    direct = sorted((iso(x["date"]), D(x["rate"])) for x in fx if x["from_currency"] == frm and x["to_currency"] == to and iso(x["date"]) <= day)
    if direct:
        return direct[-1][1]
    rev = sorted((iso(x["date"]), D(x["rate"])) for x in fx if x["from_currency"] == to and x["to_currency"] == frm and iso(x["date"]) <= day)
    return r18(D(1) / rev[-1][1])


def price(p, cust):
    ic, pol = cust["invoice_currency"], (cust["fx_policy"] or "microsoft")
    if ic == p["bc"]:
        rate = D(1)
    elif pol == "fixed":
        rate = D(cust["fixed_fx_rate"])
    elif pol == "market" or not (ic == p["pc"] and p["rate"] != 0):
        rate = market(p["bc"], ic, PERIOD_END)
    else:
        rate = r18(D(1) / p["rate"])
    if p["credit"]:
        return mul(p["cost"], rate), None
    r = rule_for(p, cust["template"])
    v, m = dec(r["value"]), r["method"]
    if m == "markup_on_cost":
        bc = mul(p["cost"], 1 + v)
    elif m == "margin_on_cost":
        bc = r18(p["cost"] / (1 - v))
    elif m == "discount_off_list":
        bc = mul(p["list"], 1 - v)
    elif m == "markup_on_list":
        bc = mul(p["list"], 1 + v)
    else:  # fixed_unit_price, in the rule's currency
        amount = mul(v, p["q"], p["f"])
        if r["currency"] == ic:
            return amount, r["rule_id"]
        return mul(amount, rate if r["currency"] == p["bc"] else market(r["currency"], ic, PERIOD_END)), r["rule_id"]
    return mul(bc, rate), r["rule_id"]


def minor(ic):
    return {"JPY": 0, "KWD": 3}.get(ic, 2)


def rnd(x, ic):
    return x.quantize(D(1).scaleb(-minor(ic)), rounding=ROUND_HALF_EVEN)


def unit_path(u):
    path = []
    while u:
        path.append(u)
        u = units[u]["parent_unit_id"] or None
    return "/".join(reversed(path))


def line_type(p):
    if p["credit"]:
        return "credit"
    if p["f"] < 0:
        return "refund"
    if p["kind"] == "usage" or p["family"] == "azure_usage":
        return "usage"
    return "license" if p["family"] == "license" else "one_time"


def invoice(cid, all_charges):
    cust = customers[cid]
    ic, template = cust["invoice_currency"], cust["template"]
    lines = defaultdict(lambda: [D(0), D(0)])  # key -> [Σ price, Σ q × sign(f)]
    for c in all_charges:
        if c["customer"] != cid:
            continue
        for p in split(c):
            amount, _ = price(p, cust)
            lt = line_type(p)
            if template == "enterprise":
                grp = p["mcat"] if p["kind"] == "usage" else p["product"] + ":" + p["sku"]
                key = (lt, p["sub"], grp, unit_path(p["unit"]) if p["unit"] else "Unassigned")
            else:
                key = (lt, p["product"] + ":" + p["sku"] if p["family"] == "license" else p["family"])
            lines[key][0] += amount
            lines[key][1] += p["q"] * (D(-1) if p["f"] < 0 else D(1))
    out = [(k, rnd(v[0], ic), v[1]) for k, v in sorted(lines.items())]
    if template == "trial" and cust["spend_cap"]:
        spent = sum(a for _, a, _ in out)
        cap = D(cust["spend_cap"])
        if spent > cap:
            out.append((("spend_cap_credit",), cap - spent, D(1)))
    services = defaultdict(lambda: [D(0), D(0)])
    for e in psa:
        if e["customer_id"] != cid or e["billable"].lower() not in ("yes", "true", "1"):
            continue
        amt = D(e["hours"]) * D(e["hourly_rate"])
        if e["currency"] != ic:
            amt = mul(amt, market(e["currency"], ic, iso(e["work_date"])))
        services[e["project_code"]][0] += amt
        services[e["project_code"]][1] += D(e["hours"])
    out += [(("service", k), rnd(v[0], ic), v[1]) for k, v in sorted(services.items())]
    for m in manual:
        if m["customer_id"] == cid and m["period"] == "2025-06":
            sign = -1 if m["line_type"] == "credit" else 1
            out.append((("manual", m["description"]), rnd(sign * D(m["quantity"]) * D(m["unit_price"]), ic), D(m["quantity"])))
    return out


CHOSEN = ["5eddb406-4e06-4586-9b4f-2af187103543", "bcd7627a-2cb9-4dd7-9014-0831806f8ba2",
          "9957f5d0-dd59-4105-b1f7-88e9ebcf616a", "4b1f1fb2-933d-4ccf-8567-b12dbf790509"]


def fmt(x):
    return format(x.normalize(), "f")


if __name__ == "__main__" and sys.argv[1:] == ["--lines"]:
    # One `customer_id|line_type|quantity|amount` per line, sorted: what tests/arithmetic.rs compares.
    ch = charges()
    for cid in CHOSEN:
        out = invoice(cid, ch)
        for line in sorted(f"{cid}|{k[0]}|{fmt(q)}|{fmt(a)}" for k, a, q in out):
            print(line)
elif __name__ == "__main__":
    ch = charges()
    for cid in sys.argv[1:] or ["5eddb406-4e06-4586-9b4f-2af187103543", "bcd7627a-2cb9-4dd7-9014-0831806f8ba2",
                                "9957f5d0-dd59-4105-b1f7-88e9ebcf616a", "4b1f1fb2-933d-4ccf-8567-b12dbf790509"]:
        out = invoice(cid, ch)
        print(f"== {customers[cid]['customer_name']} ({cid}) {customers[cid]['invoice_currency']}: {len(out)} lines, subtotal {sum(a for _, a, _ in out)}")
        for k, a, q in out:
            print(f"  {a:>14}  q={q.normalize()}  {' | '.join(k)}")
