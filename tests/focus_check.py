"""Independent per-row checks of cspbill's FOCUS dataset (issue #13), read back with DuckDB and pyarrow, with
Python's decimal arithmetic as the judge. The official validator checks enumerations only table-wide and skips
cost arithmetic and the per-invoice sum; these checks do them per row.

    python tests/focus_check.py WAREHOUSE PERIOD

Prints `ok: N rows, M invoices` or every violation (at most 20 per check) and exits 1.
"""
import decimal
import json
import sys

import duckdb
import pyarrow.parquet as pq

decimal.getcontext().prec = 80
D = decimal.Decimal
ULP = D("0.5e-18")

CATEGORIES = {"Usage", "Purchase", "Tax", "Credit", "Adjustment"}
FREQUENCIES = {"One-Time", "Recurring", "Usage-Based"}
PRICING_CATEGORIES = {None, "Standard", "Dynamic", "Committed", "Other"}
SERVICES = {
    "AI and Machine Learning": ["AI Platforms", "Bots", "Generative AI", "Machine Learning", "Natural Language Processing"],
    "Analytics": ["Analytics Platforms", "Business Intelligence", "Data Processing", "Search", "Streaming Analytics"],
    "Business Applications": ["Productivity and Collaboration"],
    "Compute": ["Containers", "End User Computing", "Quantum Compute", "Serverless Compute", "Virtual Machines"],
    "Databases": ["Caching", "Data Warehouses", "Ledger Databases", "NoSQL Databases", "Relational Databases", "Time Series Databases"],
    "Developer Tools": ["Developer Platforms", "Continuous Integration and Deployment", "Development Environments", "Source Code Management", "Quality Assurance"],
    "Identity": ["Identity and Access Management"],
    "Integration": ["API Management", "Messaging", "Workflow Orchestration"],
    "Internet of Things": ["IoT Analytics", "IoT Platforms"],
    "Management and Governance": ["Architecture", "Compliance", "Cost Management", "Data Governance", "Disaster Recovery", "Endpoint Management", "Observability", "Support"],
    "Media": ["Content Creation", "Gaming", "Media Streaming", "Mixed Reality"],
    "Migration": ["Data Migration", "Resource Migration"],
    "Mobile": [],
    "Multicloud": ["Multicloud Integration"],
    "Networking": ["Application Networking", "Content Delivery", "Network Connectivity", "Network Infrastructure", "Network Routing", "Network Security"],
    "Security": ["Secret Management", "Security Posture Management", "Threat Detection and Response"],
    "Storage": ["Backup Storage", "Block Storage", "File Storage", "Object Storage", "Storage Platforms"],
    "Web": ["Application Platforms"],
    "Other": [],
}
MANDATORY = ["BilledCost", "BillingAccountId", "BillingCurrency", "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory",
             "ChargePeriodEnd", "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost",
             "ProviderName", "PublisherName", "ServiceCategory", "ServiceName", "ServiceSubcategory", "ChargeFrequency",
             "ChargeDescription", "InvoiceId", "HostProviderName", "ServiceProviderName"]
X_COLUMNS = ["x_InvoiceLineId", "x_InvoiceLineType", "x_BilledCostRounding", "x_PartId", "x_SourceLineId", "x_ProductFamily",
             "x_ResourceGroupName", "x_OrgUnitId", "x_OrgUnitPath", "x_CorrectedBillingPeriod"]


def main(root, period):
    errors = {}

    def bad(check, msg):
        errors.setdefault(check, []).append(msg)

    path = f"{root}/marts/focus_cost_and_usage/period={period}/part-0.parquet"
    schema = pq.read_schema(path)
    names = schema.names
    if len(names) != 57 + 2 + len(X_COLUMNS) or names[59:] != X_COLUMNS or names[57:59] != ["HostProviderName", "ServiceProviderName"]:
        bad("columns", f"unexpected columns {names}")
    if any(k in n.lower() for n in names for k in ("margin", "pec", "partner", "msp_cost")) or "x_Cost" in names:
        bad("columns", "a column could reveal the MSP's cost, margin or PEC")
    for n in names:
        t = schema.field(n).type
        if n.endswith("Cost") or n.endswith("Price") or n.endswith("Quantity") or n == "x_BilledCostRounding":
            if str(t) != "decimal128(38, 18)":
                bad("types", f"{n} is {t}, not a Parquet decimal(38, 18)")
        if n.endswith("PeriodStart") or n.endswith("PeriodEnd"):
            if str(t) != "timestamp[us, tz=UTC]":
                bad("types", f"{n} is {t}, not a UTC timestamp")

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    # Timestamps as ISO text in UTC (the schema check above holds them to timestamp[us, tz=UTC]).
    ts = ", ".join(f"strftime({c}, '%Y-%m-%dT%H:%M:%SZ') as {c}" for c in ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd"))
    rel = con.sql(f"select * replace ({ts}) from read_parquet('{path}')")
    cols = rel.columns
    rows = [dict(zip(cols, r)) for r in rel.fetchall()]
    for i, r in enumerate(rows):
        where = f"row {i} ({r['x_InvoiceLineId']}, {r['x_PartId']})"
        for c in MANDATORY:
            if r[c] is None:
                bad("mandatory", f"{where}: {c} is null")
        cat, cls = r["ChargeCategory"], r["ChargeClass"]
        if cat not in CATEGORIES:
            bad("enum ChargeCategory", f"{where}: {cat!r}")
        if cls not in (None, "Correction"):
            bad("enum ChargeClass", f"{where}: {cls!r}")
        if r["ChargeFrequency"] not in FREQUENCIES:
            bad("enum ChargeFrequency", f"{where}: {r['ChargeFrequency']!r}")
        if r["PricingCategory"] not in PRICING_CATEGORIES:
            bad("enum PricingCategory", f"{where}: {r['PricingCategory']!r}")
        sc, ss = r["ServiceCategory"], r["ServiceSubcategory"]
        if sc not in SERVICES or ss not in SERVICES.get(sc, []) + [f"Other ({sc})"]:
            bad("enum ServiceCategory/Subcategory", f"{where}: {sc!r} / {ss!r}")
        for c in ("CommitmentDiscountStatus", "CommitmentDiscountCategory", "CapacityReservationStatus"):
            if r[c] is not None:
                bad("enum commitments", f"{where}: {c} = {r[c]!r}")
        for c in ("BillingCurrency", "PricingCurrency"):
            if not (isinstance(r[c], str) and len(r[c]) == 3 and r[c].isalpha() and r[c].isupper()):
                bad("currency", f"{where}: {c} = {r[c]!r}")
        if (r["SubAccountId"] is None) != (r["SubAccountType"] is None) or (r["SubAccountId"] is None) != (r["SubAccountName"] is None):
            bad("sub account", f"{where}: id {r['SubAccountId']!r}, name {r['SubAccountName']!r}, type {r['SubAccountType']!r}")
        if not (r["ChargePeriodStart"] < r["ChargePeriodEnd"] and r["BillingPeriodStart"] < r["BillingPeriodEnd"]):
            bad("periods", f"{where}: charge {r['ChargePeriodStart']}..{r['ChargePeriodEnd']}")
        if not r["ChargeDescription"].isascii():
            bad("description", f"{where}: {r['ChargeDescription']!r}")
        if r["ConsumedQuantity"] is not None and cat != "Usage":
            bad("consumed", f"{where}: ConsumedQuantity on a {cat} row")
        billed = r["BilledCost"]
        purchase_commitment = cat == "Purchase" and r["x_ProductFamily"] in ("reservation", "savings_plan")
        if r["EffectiveCost"] != (D(0) if purchase_commitment else billed):
            bad("EffectiveCost", f"{where}: EffectiveCost {r['EffectiveCost']} vs BilledCost {billed}")
        if cat == "Credit" or cls == "Correction":
            if cat == "Credit" and (r["ListUnitPrice"] is not None or r["ContractedUnitPrice"] is not None):
                bad("credit", f"{where}: unit prices on a credit")
            if cat == "Credit" and not (r["ListCost"] == r["ContractedCost"] == billed):
                bad("credit", f"{where}: List {r['ListCost']} / Contracted {r['ContractedCost']} vs Billed {billed}")
        if cls is None and cat in ("Usage", "Purchase"):
            pq_ = r["PricingQuantity"]
            if pq_ is None or r["ListUnitPrice"] is None or r["PricingUnit"] is None:
                bad("unit pricing", f"{where}: PricingQuantity {pq_}, ListUnitPrice {r['ListUnitPrice']}, PricingUnit {r['PricingUnit']}")
            else:
                tol = ULP * (abs(pq_) + 1)
                if abs(r["ListUnitPrice"] * pq_ - r["ListCost"]) > tol:
                    bad("ListCost = ListUnitPrice x PricingQuantity", f"{where}: {r['ListUnitPrice']} x {pq_} != {r['ListCost']}")
                cup = r["ContractedUnitPrice"]
                if cup is not None and abs(cup * pq_ - r["ContractedCost"]) > tol:
                    bad("ContractedCost = ContractedUnitPrice x PricingQuantity", f"{where}: {cup} x {pq_} != {r['ContractedCost']}")
                if cup is None and abs(pq_) >= D("0.000001"):
                    bad("ContractedUnitPrice", f"{where}: null with PricingQuantity {pq_}")
        if r["x_PartId"] is not None and billed - r["x_BilledCostRounding"] != (r["ContractedCost"] if cat != "Credit" else billed - r["x_BilledCostRounding"]):
            bad("BilledCost = price + carried rounding", f"{where}: {billed} - {r['x_BilledCostRounding']} != {r['ContractedCost']}")
        if r["Tags"] is not None:
            try:
                tags = json.loads(r["Tags"])
                assert isinstance(tags, dict)
            except Exception:
                bad("Tags", f"{where}: not a JSON object: {r['Tags']!r}")
                tags = {}
            if tags.get("cspbill-org-unit") != r["x_OrgUnitId"]:
                bad("Tags", f"{where}: org unit tag {tags.get('cspbill-org-unit')!r} vs x_OrgUnitId {r['x_OrgUnitId']!r}")
        elif r["x_OrgUnitId"] is not None:
            bad("Tags", f"{where}: no Tags but org unit {r['x_OrgUnitId']!r}")
        if r["InvoiceIssuerName"] != r["ProviderName"]:
            bad("entities", f"{where}: issuer {r['InvoiceIssuerName']!r} is not the provider {r['ProviderName']!r}")
        if cls == "Correction" and (r["x_CorrectedBillingPeriod"] is None or r["ChargePeriodStart"][:7] != r["x_CorrectedBillingPeriod"]):
            bad("correction", f"{where}: corrected period {r['x_CorrectedBillingPeriod']!r}, charge start {r['ChargePeriodStart']}")

    # Σ BilledCost per InvoiceId = the invoice's subtotal, and per invoice line = the line's rounded amount; a
    # charge line has one row per part, the MSP's own lines one row each.
    inv = f"read_parquet('{root}/marts/fct_invoices/period={period}/*.parquet')"
    lines = f"read_parquet('{root}/marts/fct_invoice_lines/period={period}/*.parquet')"
    f = f"read_parquet('{path}')"
    for n, sub, billed in con.sql(f"select i.invoice_number, i.subtotal, f.b from {inv} i full join (select InvoiceId, sum(BilledCost) b from {f} group by all) f on f.InvoiceId = i.invoice_number").fetchall():
        if sub is None or billed is None or sub != billed:
            bad("Σ BilledCost per InvoiceId = subtotal", f"{n}: subtotal {sub}, Σ BilledCost {billed}")
    q = f"""select l.invoice_line_id, l.line_type, l.amount, l.part_count, f.b, f.n, f.carriers
            from {lines} l full join (select x_InvoiceLineId, sum(BilledCost) b, count(*) n,
                                             count(*) filter (where x_BilledCostRounding <> 0) carriers
                                      from {f} group by all) f on f.x_InvoiceLineId = l.invoice_line_id"""
    for line, lt, amount, parts, billed, n, carriers in con.sql(q).fetchall():
        if amount is None or billed is None or amount != billed:
            bad("Σ BilledCost per invoice line = amount", f"{line}: amount {amount}, Σ BilledCost {billed}")
        own = lt in ("service", "manual", "spend_cap_credit", "adjustment")
        if n != (1 if own else parts):
            bad("rows per line", f"{line} ({lt}): {n} rows, {parts} parts")
        if not own and carriers > 1:
            bad("one carrier per line", f"{line}: {carriers} rows carry rounding")

    # The per-invoice files beside the exports: the invoice's rows, nothing else.
    for n, cust, rows_, billed in con.sql(f"select i.invoice_number, i.customer_id, count(*), sum(BilledCost) from {inv} i join {f} on InvoiceId = i.invoice_number group by all").fetchall():
        own = f"{root}/marts/exports/period={period}/customer={cust}/{n}.focus.parquet"
        try:
            got = con.sql(f"select count(*), sum(BilledCost), count(distinct InvoiceId), min(InvoiceId) from read_parquet('{own}')").fetchall()[0]
        except Exception as e:
            bad("per-invoice file", f"{own}: {e}")
            continue
        if got != (rows_, billed, 1, n):
            bad("per-invoice file", f"{own}: {got} vs {(rows_, billed, 1, n)}")
        if pq.read_schema(own).names != names:
            bad("per-invoice file", f"{own}: columns differ from the dataset's")

    if errors:
        for check, msgs in errors.items():
            print(f"FAILED {check}: {len(msgs)} violation(s)")
            for m in msgs[:20]:
                print(f"  {m}")
        return 1
    n_inv = con.sql(f"select count(*) from {inv}").fetchall()[0][0]
    print(f"ok: {len(rows)} rows, {n_inv} invoices")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
