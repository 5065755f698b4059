#!/usr/bin/env python3
"""The month-end close of a cspbill workspace written plainly in DuckDB SQL: the second implementation that
checks cspbill's invoices (issue 10's benchmark; DESIGN §4 inputs, §5 arithmetic).

    python benches/duckdb_close.py --config DIR/cspbill.toml --period 2025-06 --out DIR/duckdb_invoices.csv

It reads the period's Partner Center CSVs (daily rated usage, invoice reconciliation) and the reference CSVs with
explicit types (every column VARCHAR, then exact DECIMAL(38,18) / DATE casts: no type inference, no DOUBLE), and
builds the same charge model, tag allocation, rate-card precedence, FX, invoice grouping and rounding as cspbill.
It writes one row per invoice (customer_id, currency, invoice_number, line_count, subtotal) and prints a JSON
summary (rows, unpriced parts, timings per step) on stdout.

Exact decimals in DuckDB: `DECIMAL(38,18) * DECIMAL(38,18)` has scale 36 and overflows above 100, and decimal
division returns DOUBLE. So products and quotients go through two macros, `dmul` and `ddiv`, which compute the
exact result and round it half-even to 18 places, as Polars does with Decimal(38,18) (DESIGN §5). `dmul` splits
each operand into its integer and fractional parts (every partial product is exact in DECIMAL(38,·)); `ddiv` is a
long division on HUGEINT counts of 10^-18. Both are checked against Python's `decimal` (benches/README.md).

Not implemented because the generated workspaces do not use them (the script fails loudly if it meets them
where it can tell): JSON inputs (v1 pages, JSON lines, v2 export), legacy licence-based lines, cross-file duplicate
rows, late data / adjustment lines, rejects (a value that does not cast stops the script: cspbill would reject
the row, and a close with rejects fails anyway).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
import time
import tomllib

import duckdb

DEC = "DECIMAL(38,18)"

# ISO 4217 minor units of the currencies a workspace may invoice in (cspbill reads a maintained table; this one
# only needs the codes present, and stops on any other).
MINOR_UNITS = {
    "USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "CAD": 2, "AUD": 2, "NZD": 2, "SEK": 2, "NOK": 2, "DKK": 2,
    "PLN": 2, "CZK": 2, "HUF": 2, "INR": 2, "BRL": 2, "MXN": 2, "ZAR": 2, "SGD": 2, "HKD": 2, "CNY": 2,
    "TRY": 2, "ILS": 2, "AED": 2, "SAR": 2, "TWD": 2, "THB": 2, "MYR": 2, "PHP": 2, "IDR": 2, "RON": 2,
    "JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "VND": 0, "PYG": 0, "UGX": 0, "XOF": 0, "XAF": 0,
    "KWD": 3, "BHD": 3, "OMR": 3, "JOD": 3, "TND": 3, "LYD": 3, "IQD": 3,
}

MACROS = f"""
-- text cell → NULL when empty (Partner Center writes "" and nothing alike)
CREATE OR REPLACE MACRO t(x) AS nullif(trim(x), '');
-- exact decimal from text; a value that is not a decimal stops the run (cspbill would reject the row)
CREATE OR REPLACE MACRO d(x) AS CAST(nullif(trim(x), '') AS {DEC});
-- dates: MM/DD/YYYY, M/D/YYYY or ISO 8601
CREATE OR REPLACE MACRO pc_date(x) AS CAST(coalesce(try_strptime(trim(x), '%m/%d/%Y'),
                                                    try_strptime(left(trim(x), 10), '%Y-%m-%d')) AS DATE);
-- exact product, rounded half-even to 18 places: a = ai + af, b = bi + bf (integer and fractional parts); every
-- partial product but af × bf is exact at scale ≤ 18, af × bf is exact at scale 36 and rounded once; on an exact
-- tie the whole sum's last digit decides (half-even of the total, not of the part)
CREATE OR REPLACE MACRO _odd18(s) AS CAST((s - trunc(s)) * CAST(1000000000000000000 AS DECIMAL(19,0)) AS HUGEINT) % 2 <> 0;
CREATE OR REPLACE MACRO _dmul_r(x, y) AS
    x + round_even(y, 18)
  + CASE WHEN abs(y - round_even(y, 18)) = CAST('0.0000000000000000005' AS DECIMAL(38,36))
              AND _odd18(x + round_even(y, 18))
         THEN CAST(2 * (y - round_even(y, 18)) AS {DEC}) ELSE CAST(0 AS {DEC}) END;
CREATE OR REPLACE MACRO _dmul(a, b) AS CAST(_dmul_r(
      trunc(a) * trunc(b)
    + trunc(a) * CAST(b - trunc(b) AS DECIMAL(19,18))
    + CAST(a - trunc(a) AS DECIMAL(19,18)) * trunc(b),
      CAST(a - trunc(a) AS DECIMAL(19,18)) * CAST(b - trunc(b) AS DECIMAL(19,18))) AS {DEC});
-- a DECIMAL(38,18) as a HUGEINT count of 10^-18, and back
CREATE OR REPLACE MACRO fx_in(a) AS
    CAST(trunc(a) AS HUGEINT) * CAST(1000000000000000000 AS HUGEINT)
  + CAST((a - trunc(a)) * CAST(1000000000000000000 AS DECIMAL(19,0)) AS HUGEINT);
CREATE OR REPLACE MACRO fx_out(q) AS CAST(
      CAST(q // CAST(1000000000000000000 AS HUGEINT) AS DECIMAL(38,0))
    + CAST(q % CAST(1000000000000000000 AS HUGEINT) AS DECIMAL(38,0)) * CAST('0.000000000000000001' AS DECIMAL(19,18))
  AS {DEC});
-- exact quotient, rounded half-even to 18 places (NULL when b is 0 or NULL): long division of the HUGEINT counts
-- A / B in two steps of 10^9; each lambda binds its intermediate values once (a macro repeats its arguments)
CREATE OR REPLACE MACRO _div_q(A, B) AS list_transform(
  [struct_pack(q0 := A // B, t1 := (A % B) * 1000000000, B := B)],
  lambda x: list_transform(
    [struct_pack(q0 := x.q0, q1 := x.t1 // x.B, t2 := (x.t1 % x.B) * 1000000000, B := x.B)],
    lambda y: list_transform(
      [struct_pack(q := y.q0 * CAST(1000000000000000000 AS HUGEINT) + y.q1 * 1000000000 + y.t2 // y.B,
                   r2 := y.t2 % y.B, B := y.B)],
      lambda z: z.q + CASE WHEN 2 * z.r2 > z.B OR (2 * z.r2 = z.B AND z.q % 2 = 1) THEN 1 ELSE 0 END)[1])[1])[1];
CREATE OR REPLACE MACRO ddiv(a, b) AS list_transform([struct_pack(a := CAST(a AS {DEC}), b := CAST(b AS {DEC}))],
  lambda s: CASE WHEN s.b IS NULL OR s.b = 0 THEN NULL ELSE
    fx_out(CAST(sign(s.a) * sign(s.b) AS HUGEINT) * _div_q(abs(fx_in(s.a)), abs(fx_in(s.b)))) END)[1];
-- DuckDB substitutes macro arguments as expressions, and it inlines the projections above a join into each
-- other: a product of products would then repeat its operands exponentially. So `dmul` is called on columns, and
-- the pass over the charges puts an `OFFSET 0` (a streaming no-op the planner does not merge across) after its
-- join. `dmul_b` binds its operands once through a one-element lambda, for nested uses.
CREATE OR REPLACE MACRO dmul(a, b) AS _dmul(a, b);
CREATE OR REPLACE MACRO dmul_b(a, b) AS
  list_transform([struct_pack(a := CAST(a AS {DEC}), b := CAST(b AS {DEC}))], lambda s: _dmul(s.a, s.b))[1];
-- the sign DESIGN uses for line factors: -1 below 0, else 1
CREATE OR REPLACE MACRO sgn1(x) AS CASE WHEN x < 0 THEN CAST(-1 AS {DEC}) ELSE CAST(1 AS {DEC}) END;
-- an invoice line rounded once to the minor unit (0 to 4 places), by the rounding mode
CREATE OR REPLACE MACRO round_line(x, dp, mode) AS CASE mode
    WHEN 'half_even' THEN CASE dp WHEN 0 THEN CAST(round_even(x, 0) AS {DEC}) WHEN 1 THEN CAST(round_even(x, 1) AS {DEC}) WHEN 2 THEN CAST(round_even(x, 2) AS {DEC}) WHEN 3 THEN CAST(round_even(x, 3) AS {DEC}) WHEN 4 THEN CAST(round_even(x, 4) AS {DEC}) END
    WHEN 'half_up'   THEN CASE dp WHEN 0 THEN CAST(round(x, 0) AS {DEC}) WHEN 1 THEN CAST(round(x, 1) AS {DEC}) WHEN 2 THEN CAST(round(x, 2) AS {DEC}) WHEN 3 THEN CAST(round(x, 3) AS {DEC}) WHEN 4 THEN CAST(round(x, 4) AS {DEC}) END
    WHEN 'down'      THEN CASE dp WHEN 0 THEN CAST(trunc(x, 0) AS {DEC}) WHEN 1 THEN CAST(trunc(x, 1) AS {DEC}) WHEN 2 THEN CAST(trunc(x, 2) AS {DEC}) WHEN 3 THEN CAST(trunc(x, 3) AS {DEC}) WHEN 4 THEN CAST(trunc(x, 4) AS {DEC}) END END;
"""


def sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def header_of(path: str) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f))


def first_row(path: str) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        r = csv.reader(f)
        next(r)
        return next(r, [])


def read_csv_sql(files: list[str], header: list[str]) -> str:
    """Every column VARCHAR, by the file's own header: no sniffing of types."""
    cols = ", ".join(f"{sql_str(h.lstrip(chr(0xfeff)))}: 'VARCHAR'" for h in header)
    flist = "[" + ", ".join(sql_str(f) for f in files) + "]"
    return (f"read_csv({flist}, header=true, auto_detect=false, delim=',', quote='\"', escape='\"', "
            f"columns={{{cols}}}, parallel=true)")


def col_map(header: list[str]) -> dict[str, str]:
    """lower-cased name (camelCase and PascalCase alike) → the header's own spelling."""
    return {h.lstrip("\ufeff").strip().lower(): h.lstrip("\ufeff") for h in header}


class Columns:
    def __init__(self, header: list[str]):
        self.m = col_map(header)

    def __call__(self, name: str) -> str:
        h = self.m.get(name.lower())
        return f'"{h}"' if h is not None else "CAST(NULL AS VARCHAR)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--period", required=True)
    ap.add_argument("--out", required=True, help="invoice subtotals, .csv or .parquet")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--memory-limit", default="")
    ap.add_argument("--temp-directory", default="")
    ap.add_argument("--lines-out", default="", help="also write the invoice lines (csv) for debugging")
    args = ap.parse_args()

    t_all = time.perf_counter()
    timings: dict[str, float] = {}

    def step(name: str, t0: float) -> float:
        t1 = time.perf_counter()
        timings[name] = round(t1 - t0, 3)
        return t1

    with open(args.config, "rb") as f:
        cfg = tomllib.load(f)
    base = os.path.dirname(os.path.abspath(args.config))
    period = args.period
    y, m = (int(x) for x in period.split("-"))
    inputs = cfg.get("inputs", {})
    billing = cfg.get("billing", {})
    rounding = billing.get("rounding", "half_even")
    proration = billing.get("proration", "mirror_microsoft")
    fx_date_policy = billing.get("fx_date", "period_end")
    azure_source = billing.get("azure_usage_source", "auto")
    prefix = billing.get("invoice_prefix", "INV")
    assert rounding in ("half_even", "half_up", "down"), rounding
    assert proration in ("mirror_microsoft", "none"), proration
    assert fx_date_policy in ("period_end", "charge_date"), fx_date_policy

    def path(key: str) -> str | None:
        p = inputs.get(key)
        if not p:
            return None
        p = os.path.join(base, p.replace("{period}", period))
        return p if os.path.exists(p) else None

    con = duckdb.connect()
    if args.threads:
        con.execute(f"SET threads = {args.threads}")
    if args.memory_limit:
        con.execute(f"SET memory_limit = {sql_str(args.memory_limit)}")
    if args.temp_directory:
        con.execute(f"SET temp_directory = {sql_str(args.temp_directory)}")
    con.execute("SET preserve_insertion_order = false")
    con.execute(MACROS)
    t = time.perf_counter()

    # ---- §4.1 Partner Center files, detected by content (header), never by name ----------------------------
    pc_dir = path("partner_center")
    files = sorted(glob.glob(os.path.join(pc_dir, "*"))) if pc_dir else []
    usage_files: dict[tuple, list[str]] = {}
    recon_files: dict[tuple, list[str]] = {}
    billed: dict[str, bool] = {}
    for f in files:
        if not f.lower().endswith(".csv"):
            raise SystemExit(f"{f}: only CSV inputs are implemented in the DuckDB close")
        h = header_of(f)
        low = {x.lstrip("\ufeff").strip().lower() for x in h}
        if "billingpretaxtotal" in low:
            usage_files.setdefault(tuple(h), []).append(f)
            inv_i = [x.lstrip("\ufeff").strip().lower() for x in h].index("invoicenumber") if "invoicenumber" in low else None
            row = first_row(f)
            billed[f] = inv_i is not None and inv_i < len(row) and row[inv_i].strip() != ""
        elif "subtotal" in low and "billablequantity" in low:
            recon_files.setdefault(tuple(h), []).append(f)
        else:
            raise SystemExit(f"{f}: not a daily-usage or invoice reconciliation CSV")
    # billed daily usage wins over unbilled (DESIGN §4.1)
    if any(billed.values()):
        usage_files = {h: [f for f in fs if billed[f]] for h, fs in usage_files.items()}
        usage_files = {h: fs for h, fs in usage_files.items() if fs}

    p_start = f"DATE '{y:04d}-{m:02d}-01'"
    p_end = f"(DATE '{y:04d}-{m:02d}-01' + INTERVAL 1 MONTH - INTERVAL 1 DAY)::DATE"

    usage_parts = []
    for h, fs in usage_files.items():
        c = Columns(list(h))
        usage_parts.append(f"""
          SELECT {c('CustomerId')} AS customer_id, {c('ProductId')} AS product_id, {c('SkuId')} AS sku_id,
                 {c('PublisherName')} AS publisher_name, {c('SubscriptionId')} AS pc_subscription_id,
                 {c('EntitlementId')} AS entitlement_id, {c('UsageDate')} AS usage_date,
                 {c('MeterCategory')} AS meter_category, {c('MeterSubCategory')} AS meter_subcategory,
                 {c('ResourceGroup')} AS resource_group, {c('Tags')} AS tags, {c('ChargeType')} AS charge_type,
                 {c('UnitPrice')} AS unit_price, {c('Quantity')} AS quantity,
                 {c('BillingPreTaxTotal')} AS billing_pre_tax_total, {c('BillingCurrency')} AS billing_currency,
                 {c('PricingCurrency')} AS pricing_currency, {c('EffectiveUnitPrice')} AS effective_unit_price,
                 {c('PCToBCExchangeRate')} AS pc_to_bc_exchange_rate,
                 {c('PartnerEarnedCreditPercentage')} AS pec_percentage
          FROM {read_csv_sql(fs, list(h))}""")
    has_usage = bool(usage_parts)
    if not usage_parts:
        usage_parts.append("SELECT " + ", ".join(f"CAST(NULL AS VARCHAR) AS {x}" for x in (
            "customer_id product_id sku_id publisher_name pc_subscription_id entitlement_id usage_date "
            "meter_category meter_subcategory resource_group tags charge_type unit_price quantity "
            "billing_pre_tax_total billing_currency pricing_currency effective_unit_price "
            "pc_to_bc_exchange_rate pec_percentage").split()) + " WHERE false")

    # typed daily usage (stg_pc_daily_usage, the columns the close needs)
    con.execute(f"""
      CREATE OR REPLACE VIEW stg_usage AS
      SELECT t(customer_id) AS customer_id,
             t(product_id) AS product_id,
             CASE WHEN regexp_full_match(t(sku_id), '[0-9]{{1,3}}') THEN lpad(t(sku_id), 4, '0') ELSE t(sku_id) END AS sku_id,
             t(publisher_name) AS publisher_name,
             t(pc_subscription_id) AS pc_subscription_id,
             t(entitlement_id) AS entitlement_id,
             pc_date(usage_date) AS usage_date,
             t(meter_category) AS meter_category, t(meter_subcategory) AS meter_subcategory,
             t(resource_group) AS resource_group, t(tags) AS tags, t(charge_type) AS charge_type,
             d(unit_price) AS unit_price, d(quantity) AS quantity,
             d(billing_pre_tax_total) AS cost,
             upper(t(billing_currency)) AS billing_currency, upper(t(pricing_currency)) AS pricing_currency,
             d(effective_unit_price) AS eup, d(pc_to_bc_exchange_rate) AS pc_rate,
             d(pec_percentage) AS pec_pct
      FROM ({' UNION ALL BY NAME '.join(usage_parts)})
    """)

    recon_parts = []
    for h, fs in recon_files.items():
        c = Columns(list(h))
        recon_parts.append(f"""
          SELECT {c('CustomerId')} AS customer_id, {c('ProductId')} AS product_id, {c('SkuId')} AS sku_id,
                 {c('SkuName')} AS sku_name, {c('ProductName')} AS product_name, {c('ChargeType')} AS charge_type,
                 {c('UnitPrice')} AS unit_price, {c('Quantity')} AS quantity, {c('Subtotal')} AS subtotal,
                 {c('Currency')} AS currency, {c('PriceAdjustmentDescription')} AS price_adjustment_description,
                 {c('PublisherName')} AS publisher_name, {c('SubscriptionId')} AS subscription_id,
                 {c('ChargeStartDate')} AS charge_start_date, {c('TermAndBillingCycle')} AS term_and_billing_cycle,
                 {c('EffectiveUnitPrice')} AS effective_unit_price, {c('BillableQuantity')} AS billable_quantity,
                 {c('PricingCurrency')} AS pricing_currency, {c('PCToBCExchangeRate')} AS pc_to_bc_exchange_rate,
                 {c('MeterDescription')} AS meter_description, {c('CreditReasonCode')} AS credit_reason_code
          FROM {read_csv_sql(fs, list(h))}""")
    if not recon_parts:
        recon_parts.append("SELECT " + ", ".join(f"CAST(NULL AS VARCHAR) AS {x}" for x in (
            "customer_id product_id sku_id sku_name product_name charge_type unit_price quantity subtotal "
            "currency price_adjustment_description publisher_name subscription_id charge_start_date "
            "term_and_billing_cycle effective_unit_price billable_quantity pricing_currency "
            "pc_to_bc_exchange_rate meter_description credit_reason_code").split()) + " WHERE false")
    con.execute(f"""
      CREATE OR REPLACE TABLE stg_invoice AS
      WITH typed AS (
        SELECT t(customer_id) AS customer_id, t(product_id) AS product_id,
               CASE WHEN regexp_full_match(t(sku_id), '[0-9]{{1,3}}') THEN lpad(t(sku_id), 4, '0') ELSE t(sku_id) END AS sku_id,
               t(sku_name) AS sku_name, t(product_name) AS product_name, t(charge_type) AS charge_type,
               d(unit_price) AS unit_price, d(quantity) AS quantity, d(subtotal) AS cost,
               upper(t(currency)) AS billing_currency, t(price_adjustment_description) AS pad,
               t(publisher_name) AS publisher_name, t(subscription_id) AS subscription_id,
               pc_date(charge_start_date) AS charge_start_date, t(term_and_billing_cycle) AS term,
               d(effective_unit_price) AS eup, d(billable_quantity) AS billable_quantity,
               upper(t(pricing_currency)) AS pricing_currency, d(pc_to_bc_exchange_rate) AS pc_rate,
               t(meter_description) AS meter_description, t(credit_reason_code) AS credit_reason_code
        FROM ({' UNION ALL BY NAME '.join(recon_parts)}))
      SELECT *,
        -- product_family, first match wins (DESIGN §5)
        CASE WHEN publisher_name IS NOT NULL AND NOT starts_with(lower(publisher_name), 'microsoft') THEN 'marketplace'
             WHEN contains(lower(coalesce(term, '')), 'reservation') OR contains(lower(coalesce(sku_name, '')), 'reservation') THEN 'reservation'
             WHEN contains(lower(coalesce(term, '')), 'reserved') OR contains(lower(coalesce(sku_name, '')), 'reserved') THEN 'reservation'
             WHEN contains(lower(coalesce(product_name, '')), 'savings plan') OR contains(lower(coalesce(sku_name, '')), 'savings plan')
                  OR contains(lower(coalesce(term, '')), 'savings plan') THEN 'savings_plan'
             WHEN starts_with(lower(coalesce(product_id, '')), 'dzh318z0') THEN 'azure_usage'
             WHEN starts_with(lower(coalesce(product_id, '')), 'dg7gmgf0') THEN 'software'
             WHEN contains(lower(coalesce(term, '')), 'perpetual') THEN 'software'
             ELSE 'license' END AS product_family,
        lower(coalesce(charge_type, '')) = 'customercredit' OR credit_reason_code IS NOT NULL AS is_credit
      FROM typed
    """)

    # ---- reference data (§4.2), every cell VARCHAR then typed ------------------------------------------------
    def ref(key: str, cols: list[str]) -> str:
        p = path(key)
        if p is None:
            return "SELECT " + ", ".join(f"CAST(NULL AS VARCHAR) AS {c}" for c in cols) + " WHERE false"
        h = header_of(p)
        c = Columns(h)
        sel = ", ".join(f"t({c(x)}) AS {x}" for x in cols)
        return f"SELECT {sel}, row_number() OVER () AS line_no FROM {read_csv_sql([p], h)}"

    def pct(x: str) -> str:  # `15%` = 0.15; a plain number is a fraction
        return (f"CASE WHEN ends_with({x}, '%') THEN dmul(CAST(trim(rtrim({x}, '%')) AS {DEC}), CAST('0.01' AS {DEC})) "
                f"ELSE CAST({x} AS {DEC}) END")

    con.execute(f"""
      CREATE OR REPLACE TABLE customers AS
      SELECT customer_id, lower(customer_id) AS c_key, upper(invoice_currency) AS ic,
             coalesce(lower(template), 'smb') AS template, coalesce(lower(fx_policy), 'microsoft') AS fx_policy,
             CAST(fixed_fx_rate AS {DEC}) AS fixed_fx_rate, CAST(spend_cap AS {DEC}) AS spend_cap
      FROM ({ref('customers', ['customer_id', 'invoice_currency', 'template', 'fx_policy', 'fixed_fx_rate', 'spend_cap'])})
    """)
    con.execute(f"""
      CREATE OR REPLACE TABLE rate_cards AS
      SELECT rule_id, line_no,
             CASE WHEN coalesce(customer_id, '*') = '*' THEN '' ELSE lower(customer_id) END AS r_customer,
             CASE WHEN coalesce(template, '*') = '*' THEN '' ELSE lower(template) END AS r_template,
             CASE WHEN coalesce(product_family, '*') = '*' THEN '' ELSE lower(product_family) END AS r_family,
             CASE WHEN coalesce(meter_category, '*') = '*' THEN '' ELSE lower(meter_category) END AS r_mcat,
             CASE WHEN coalesce(meter_subcategory, '*') = '*' THEN '' ELSE lower(meter_subcategory) END AS r_msub,
             CASE WHEN coalesce(product_id, '*') = '*' THEN ''
                  WHEN contains(product_id, ':') AND regexp_full_match(split_part(product_id, ':', 2), '[0-9]{{1,3}}')
                    THEN lower(split_part(product_id, ':', 1)) || ':' || lpad(split_part(product_id, ':', 2), 4, '0')
                  ELSE lower(product_id) END AS r_product,
             lower(method) AS method, {pct('value')} AS value, upper(currency) AS r_ccy,
             CAST(valid_from AS DATE) AS valid_from, CAST(valid_to AS DATE) AS valid_to
      FROM ({ref('rate_cards', ['rule_id', 'customer_id', 'template', 'product_family', 'meter_category',
                                'meter_subcategory', 'product_id', 'method', 'value', 'currency', 'valid_from', 'valid_to'])})
      QUALIFY row_number() OVER (PARTITION BY rule_id ORDER BY line_no) = 1  -- identical rows of one rule count once
    """)
    con.execute("""
      CREATE OR REPLACE TABLE rate_rules AS
      SELECT *, (CASE WHEN r_customer <> '' THEN 100000 ELSE 0 END)
              + (CASE WHEN contains(r_product, ':') THEN 20000 WHEN r_product <> '' THEN 10000 ELSE 0 END)
              + (CASE WHEN r_msub <> '' THEN 1000 ELSE 0 END) + (CASE WHEN r_mcat <> '' THEN 100 ELSE 0 END)
              + (CASE WHEN r_family <> '' THEN 10 ELSE 0 END) + (CASE WHEN r_template <> '' THEN 1 ELSE 0 END) AS score
      FROM rate_cards
    """)
    con.execute(f"""
      CREATE OR REPLACE TABLE tag_rule_rows AS
      SELECT rule_id, line_no, CAST(priority AS BIGINT) AS priority,
             CASE WHEN coalesce(customer_id, '*') = '*' THEN NULL ELSE lower(customer_id) END AS r_customer,
             CASE WHEN coalesce(subscription_id, '*') = '*' THEN NULL ELSE lower(subscription_id) END AS r_sub,
             CASE WHEN coalesce(resource_group, '*') = '*' THEN NULL ELSE resource_group END AS r_rg,
             CASE WHEN coalesce(tag_key, '*') = '*' THEN NULL ELSE lower(tag_key) END AS r_key,
             CASE WHEN coalesce(tag_value, '*') = '*' THEN NULL ELSE tag_value END AS r_value,
             CASE WHEN coalesce(target_customer_id, '*') = '*' THEN NULL ELSE target_customer_id END AS target_customer_id,
             target_unit_id, {pct('share')} AS share
      FROM ({ref('tag_rules', ['rule_id', 'priority', 'customer_id', 'subscription_id', 'resource_group', 'tag_key',
                               'tag_value', 'target_customer_id', 'target_unit_id', 'share'])})
    """)
    # parts of each rule in file order; a blank share is 1 for a single row, else the remainder (last row)
    con.execute(f"""
      CREATE OR REPLACE TABLE tag_parts AS
      WITH o AS (
        SELECT *, row_number() OVER (PARTITION BY rule_id ORDER BY line_no) AS part_no,
               count(*) OVER (PARTITION BY rule_id) AS n_parts FROM tag_rule_rows)
      SELECT rule_id, part_no, part_no = n_parts AS is_last, target_customer_id, target_unit_id,
             coalesce(share, CAST(1 AS {DEC}) - coalesce(sum(share) OVER (PARTITION BY rule_id), 0)) AS share
      FROM o
    """)
    # the other parts' shares, for the last part's remainder
    con.execute("""
      CREATE OR REPLACE TABLE tag_rules AS
      SELECT rule_id, any_value(priority) AS priority, any_value(r_customer) AS r_customer, any_value(r_sub) AS r_sub,
             any_value(r_rg) AS r_rg, any_value(r_key) AS r_key, any_value(r_value) AS r_value
      FROM tag_rule_rows GROUP BY rule_id
    """)
    bad = con.execute("SELECT count(*) FROM tag_rules WHERE r_value IS NOT NULL AND r_key IS NULL").fetchone()[0]
    assert bad == 0, "a tag_value without a tag_key"
    con.execute(f"""
      CREATE OR REPLACE TABLE fx_rates AS
      SELECT CAST(date AS DATE) AS date, upper(from_currency) AS from_ccy, upper(to_currency) AS to_ccy,
             CAST(rate AS {DEC}) AS rate
      FROM ({ref('fx_rates', ['date', 'from_currency', 'to_currency', 'rate'])})
    """)
    con.execute(f"""
      CREATE OR REPLACE TABLE manual_lines AS
      SELECT customer_id, period, CAST(quantity AS {DEC}) AS quantity, CAST(unit_price AS {DEC}) AS unit_price,
             upper(currency) AS currency, lower(line_type) AS line_type
      FROM ({ref('manual_lines', ['customer_id', 'period', 'quantity', 'unit_price', 'currency', 'line_type'])})
    """)
    con.execute(f"""
      CREATE OR REPLACE TABLE psa AS
      SELECT line_no, customer_id, coalesce(project_code, '') AS project_code, CAST(work_date AS DATE) AS work_date,
             CAST(hours AS {DEC}) AS hours, CAST(hourly_rate AS {DEC}) AS hourly_rate, upper(currency) AS currency,
             CASE WHEN lower(billable) IN ('true', 'yes', '1', 'y') THEN true
                  WHEN lower(billable) IN ('false', 'no', '0', 'n') THEN false END AS billable, billable AS billable_text
      FROM ({ref('psa_time_entries', ['customer_id', 'project_code', 'work_date', 'hours', 'hourly_rate', 'currency', 'billable'])})
    """)
    n = con.execute("SELECT count(*) FROM psa WHERE billable IS NULL AND billable_text IS NOT NULL").fetchone()[0]
    assert n == 0, "psa_time_entries.csv: a `billable` that is not true/false, yes/no, 1/0"
    con.execute("CREATE OR REPLACE TABLE minor_units(currency VARCHAR, dp INTEGER)")
    con.executemany("INSERT INTO minor_units VALUES (?, ?)", sorted(MINOR_UNITS.items()))
    t = step("read_reference", t)

    # ---- §5 Charges: int_charges ----------------------------------------------------------------------------
    source = azure_source if azure_source != "auto" else ("daily_usage" if has_usage else "invoice")
    # usage rows: q = Quantity, f = ±1 by the sign of EUP, list = UnitPrice × q × rate × f, PEC where a PEC % > 0
    con.execute(f"""
      CREATE OR REPLACE VIEW usage_charges AS
      WITH a AS (
        SELECT *, coalesce(pc_rate, CASE WHEN pricing_currency IS NULL OR pricing_currency = billing_currency
                                         THEN CAST(1 AS {DEC}) END) AS rate,
               sgn1(eup) AS f, dmul(unit_price - eup, quantity) AS pec_q
        FROM stg_usage
        WHERE usage_date BETWEEN {p_start} AND {p_end})
      SELECT 'daily_usage' AS source_kind, customer_id, entitlement_id AS subscription_id, pc_subscription_id,
             resource_group, tags,
             CASE WHEN publisher_name IS NOT NULL AND NOT starts_with(lower(publisher_name), 'microsoft')
                  THEN 'marketplace' ELSE 'azure_usage' END AS product_family,
             product_id, sku_id, meter_category, meter_subcategory,
             lower(coalesce(charge_type, '')) = 'customercredit' AS is_credit,
             usage_date AS charge_date, billing_currency, pricing_currency, rate AS pc_to_bc_rate,
             quantity AS q, f, cost, unit_price,
             CAST(NULL AS {DEC}) AS list,  -- UnitPrice × q × rate × f, computed in pass 2 where a rule needs it
             CASE WHEN pec_pct > 0 THEN dmul(pec_q, rate) ELSE CAST(0 AS {DEC}) END AS pec
      FROM a
    """)
    f_nce = ("CASE WHEN product_family = 'azure_usage' THEN sgn1(eup) ELSE coalesce(ratio, sgn1(eup)) END"
             if proration == "mirror_microsoft" else "sgn1(eup)")
    con.execute(f"""
      CREATE OR REPLACE TABLE invoice_charges_all AS
      WITH a AS (
        SELECT *, coalesce(billable_quantity, quantity) AS q,
               coalesce(pc_rate, CASE WHEN pricing_currency IS NULL OR pricing_currency = billing_currency
                                      THEN CAST(1 AS {DEC}) END) AS rate,
               dmul(CAST(nullif(regexp_extract(pad, '(?i)(\\d+(?:\\.\\d+)?)\\s*%\\s*Promotional\\s+Discount', 1), '') AS {DEC}),
                    CAST('0.01' AS {DEC})) AS promo
        FROM stg_invoice),
      b AS (
        SELECT *, CASE WHEN promo IS NULL THEN CAST(1 AS {DEC}) WHEN promo < 1 THEN CAST(1 AS {DEC}) - promo END AS divisor,
               ddiv(eup, unit_price) AS eup_up
        FROM a),
      c AS (SELECT *, ddiv(eup_up, divisor) AS ratio FROM b),
      e AS (SELECT *, {f_nce} AS f, dmul(unit_price, q) AS up_q, dmul(unit_price - eup, q) AS pec_q FROM c),
      g AS (SELECT *, dmul(up_q, rate) AS up_q_rate, dmul(pec_q, rate) AS pec_q_rate FROM e)
      SELECT 'invoice_line' AS source_kind, customer_id, subscription_id, subscription_id AS pc_subscription_id,
             CAST(NULL AS VARCHAR) AS resource_group, CAST(NULL AS VARCHAR) AS tags, product_family,
             product_id, sku_id, CAST(NULL AS VARCHAR) AS meter_category, CAST(NULL AS VARCHAR) AS meter_subcategory,
             is_credit, charge_start_date AS charge_date, billing_currency, pricing_currency, rate AS pc_to_bc_rate,
             q, f, cost, unit_price, dmul(up_q_rate, f) AS list,
             CASE WHEN product_family = 'azure_usage' AND eup >= 0 AND eup < unit_price
                  THEN pec_q_rate ELSE CAST(0 AS {DEC}) END AS pec,
             -- metered consumption: Azure plan lines, and any other line with a MeterDescription (DESIGN §5)
             NOT is_credit AND (product_family = 'azure_usage' OR meter_description IS NOT NULL) AS metered
      FROM g
    """)
    n_meter_other = con.execute(
        "SELECT count(*) FROM invoice_charges_all WHERE metered AND product_family <> 'azure_usage'").fetchone()[0]
    if source == "daily_usage":
        charges_sql = """SELECT * FROM usage_charges
                         UNION ALL BY NAME SELECT * EXCLUDE (metered) FROM invoice_charges_all WHERE NOT metered"""
    else:
        charges_sql = "SELECT * EXCLUDE (metered) FROM invoice_charges_all"
    con.execute(f"CREATE OR REPLACE VIEW int_charges AS {charges_sql}")

    # Two passes over the charges, as the rules' shape asks (rust-stack.md "Shapes that are not ordinary joins"):
    # pass 1 collects the distinct keys that decide allocation, rating and grouping (a few thousand to a few
    # hundred thousand); the rules are resolved on them; pass 2 streams every charge once through one join with
    # the resolved key parts, computes the split amounts and prices, and sums the invoice lines.
    KEY = ["source_kind", "customer_id", "subscription_id", "resource_group", "tags", "product_family",
           "product_id", "sku_id", "meter_category", "meter_subcategory", "is_credit", "charge_date",
           "billing_currency", "pricing_currency", "pc_to_bc_rate"]
    # equi-join on the key with NULLs made comparable (a hash join; IS NOT DISTINCT FROM on 15 columns is not)
    def nn(e: str, k: str) -> str:
        if k == "charge_date":
            return f"coalesce({e}, DATE '0001-01-01')"
        if k == "pc_to_bc_rate":
            return f"coalesce({e}, CAST(-1 AS {DEC}))"
        if k == "is_credit":
            return f"coalesce(CAST({e} AS INTEGER), -1)"
        return f"coalesce({e}, chr(0))"
    con.execute(f"CREATE OR REPLACE TABLE charge_keys AS SELECT {', '.join(KEY)}, count(*) AS n FROM int_charges GROUP BY ALL")
    t = step("pass1_distinct_keys", t)

    # ---- §5 Allocate: tag rules on the distinct (customer, subscription, resource group, tags) ---------------
    con.execute("""
      CREATE OR REPLACE TABLE alloc_keys AS
      SELECT DISTINCT lower(customer_id) AS k_customer, lower(subscription_id) AS k_sub, resource_group, tags
      FROM charge_keys
    """)
    # every (tags, key, value) of JSON-object Tags; keys case-insensitive, values as text
    con.execute("""
      CREATE OR REPLACE TABLE key_tags AS
      WITH t AS (SELECT DISTINCT tags FROM alloc_keys WHERE tags IS NOT NULL AND json_valid(tags)
                                                         AND json_type(tags) = 'OBJECT'),
           e AS (SELECT tags, unnest(map_entries(json_transform(tags, '"MAP(VARCHAR, JSON)"'))) AS kv FROM t)
      SELECT tags, lower(kv.key) AS k,
             CASE WHEN json_type(kv.value) = 'VARCHAR' THEN json_extract_string(kv.value, '$')
                  WHEN json_type(kv.value) = 'NULL' THEN '' ELSE CAST(kv.value AS VARCHAR) END AS v
      FROM e
    """)
    # a rule matches when every field it names matches: customer and subscription exactly (case-insensitive),
    # resource group by a case-insensitive glob, tag key case-insensitively and tag value by a case-sensitive glob
    con.execute("""
      CREATE OR REPLACE TABLE alloc_match AS
      SELECT k.k_customer, k.k_sub, k.resource_group, k.tags, r.rule_id, r.priority
      FROM alloc_keys k JOIN tag_rules r
        ON (r.r_customer IS NULL OR r.r_customer = k.k_customer)
       AND (r.r_sub IS NULL OR r.r_sub = k.k_sub)
       AND (r.r_rg IS NULL OR (k.resource_group IS NOT NULL AND lower(k.resource_group) GLOB lower(r.r_rg)))
       AND (r.r_key IS NULL OR EXISTS (SELECT 1 FROM key_tags g WHERE g.tags = k.tags AND g.k = r.r_key
                                        AND (r.r_value IS NULL OR g.v GLOB r.r_value)))
    """)
    # the lowest priority wins; two rule ids at the winning priority are a conflict (cspbill: exit 2)
    con.execute("""
      CREATE OR REPLACE TABLE alloc_win AS
      SELECT k_customer, k_sub, resource_group, tags, min(rule_id) AS rule_id, count(DISTINCT rule_id) AS n_win
      FROM (SELECT *, min(priority) OVER (PARTITION BY k_customer, k_sub, resource_group, tags) AS top FROM alloc_match)
      WHERE priority = top
      GROUP BY ALL
    """)
    conflicts = con.execute("SELECT count(*) FROM alloc_win WHERE n_win > 1").fetchone()[0]
    if conflicts:
        raise SystemExit(f"{conflicts} charge key(s) match two tag rules at the winning priority (cspbill exits 2)")
    # the last part of a split takes the remainder: a − Σ round18(a × share) over the other parts
    max_parts = con.execute("SELECT coalesce(max(part_no), 1) FROM tag_parts").fetchone()[0]
    others = [f"os{k}" for k in range(1, max_parts)]
    other_cols = ", ".join(
        f"max(CASE WHEN part_no = {k} AND NOT is_last THEN share END) OVER (PARTITION BY rule_id) AS os{k}"
        for k in range(1, max_parts)) or "NULL AS _none"
    con.execute(f"CREATE OR REPLACE TABLE tag_parts_x AS SELECT *, {other_cols} FROM tag_parts")
    fx_need = p_end if fx_date_policy == "period_end" else "k.charge_date"
    # one row per key and part: the paying customer (the target's spelling, else the charge's own), its unit
    con.execute(f"""
      CREATE OR REPLACE TABLE key_parts_a AS
      SELECT k.*, w.rule_id AS tag_rule_id, coalesce(p.part_no, 1) AS part_no, p.rule_id IS NULL AS whole,
             coalesce(p.is_last, true) AS is_last, p.share, {', '.join(f'p.{o}' for o in others) + ',' if others else ''}
             coalesce(p.target_customer_id, k.customer_id) AS pay_customer, p.target_unit_id AS unit_id,
             {fx_need} AS fx_need
      FROM charge_keys k
      LEFT JOIN alloc_win w
        ON w.k_customer IS NOT DISTINCT FROM lower(k.customer_id) AND w.k_sub IS NOT DISTINCT FROM lower(k.subscription_id)
       AND w.resource_group IS NOT DISTINCT FROM k.resource_group AND w.tags IS NOT DISTINCT FROM k.tags
      LEFT JOIN tag_parts_x p ON p.rule_id = w.rule_id
    """)

    # ---- §5 Rate: the paying customer's card, most specific valid rule, credits at cost, FX ------------------
    con.execute("""
      CREATE OR REPLACE TABLE key_parts_b AS
      SELECT a.*, cu.customer_id IS NOT NULL AS known, cu.ic, cu.template, cu.fx_policy, cu.fixed_fx_rate,
             coalesce(a.is_credit, false) AS credit,
             coalesce(lower(trim(a.pay_customer)), '') AS k_customer,
             coalesce(cu.template, '') AS k_template,
             coalesce(lower(a.product_family), '') AS k_family,
             CASE WHEN a.source_kind = 'invoice_line' THEN '' ELSE coalesce(lower(trim(a.meter_category)), '') END AS k_mcat,
             CASE WHEN a.source_kind = 'invoice_line' THEN '' ELSE coalesce(lower(trim(a.meter_subcategory)), '') END AS k_msub,
             coalesce(lower(trim(a.product_id)), '') AS k_product,
             coalesce(lower(trim(a.product_id)), '') || ':' || coalesce(lower(trim(a.sku_id)), '') AS k_prodsku
      FROM key_parts_a a LEFT JOIN customers cu ON cu.c_key = lower(trim(a.pay_customer))
    """)
    con.execute("""
      CREATE OR REPLACE TABLE rate_resolved AS
      WITH keys AS (SELECT DISTINCT k_customer, k_template, k_family, k_mcat, k_msub, k_product, k_prodsku, charge_date
                    FROM key_parts_b WHERE known AND NOT credit),
      m AS (
        SELECT k.*, r.rule_id, r.line_no, r.method, r.value, r.r_ccy, r.score
        FROM keys k JOIN rate_rules r
          ON (r.r_customer = '' OR r.r_customer = k.k_customer)
         AND (r.r_template = '' OR r.r_template = k.k_template)
         AND (r.r_family = '' OR r.r_family = k.k_family)
         AND (r.r_mcat = '' OR r.r_mcat = k.k_mcat)
         AND (r.r_msub = '' OR r.r_msub = k.k_msub)
         AND (r.r_product = '' OR r.r_product = CASE WHEN contains(r.r_product, ':') THEN k.k_prodsku ELSE k.k_product END)
         AND (r.valid_from IS NULL OR r.valid_from <= k.charge_date)
         AND (r.valid_to IS NULL OR k.charge_date < r.valid_to)),
      top AS (SELECT *, max(score) OVER (PARTITION BY k_customer, k_template, k_family, k_mcat, k_msub, k_product,
                                                       k_prodsku, charge_date) AS top_score FROM m)
      SELECT k_customer, k_template, k_family, k_mcat, k_msub, k_product, k_prodsku, charge_date,
             count(*) AS n_top, arg_min(rule_id, line_no) AS rule_id, arg_min(method, line_no) AS method,
             arg_min(value, line_no) AS value, arg_min(r_ccy, line_no) AS r_ccy
      FROM top WHERE score = top_score GROUP BY ALL
    """)
    # market FX: the latest direct rate on or before the date, else the reverse pair's inverted
    con.execute(f"""
      CREATE OR REPLACE TABLE fx_needs AS
      SELECT DISTINCT billing_currency AS from_ccy, ic AS to_ccy, fx_need AS need FROM key_parts_b
      WHERE known AND ic <> billing_currency
      UNION SELECT DISTINCT r.r_ccy, b.ic, b.fx_need FROM rate_resolved r
        JOIN key_parts_b b USING (k_customer, k_template, k_family, k_mcat, k_msub, k_product, k_prodsku, charge_date)
      WHERE r.r_ccy IS NOT NULL AND r.r_ccy <> b.ic
    """)
    con.execute(f"""
      CREATE OR REPLACE TABLE market AS
      WITH direct AS (
        SELECT n.from_ccy, n.to_ccy, n.need, arg_max(x.rate, x.date) AS rate
        FROM fx_needs n JOIN fx_rates x ON x.from_ccy = n.from_ccy AND x.to_ccy = n.to_ccy AND x.date <= n.need
        GROUP BY ALL),
      reverse AS (
        SELECT n.from_ccy, n.to_ccy, n.need, arg_max(x.rate, x.date) AS rate
        FROM fx_needs n JOIN fx_rates x ON x.from_ccy = n.to_ccy AND x.to_ccy = n.from_ccy AND x.date <= n.need
        GROUP BY ALL),
      inv AS (SELECT *, ddiv(CAST(1 AS {DEC}), rate) AS inv_rate FROM reverse)
      SELECT n.from_ccy, n.to_ccy, n.need, coalesce(d.rate, v.inv_rate) AS rate
      FROM fx_needs n LEFT JOIN direct d USING (from_ccy, to_ccy, need) LEFT JOIN inv v USING (from_ccy, to_ccy, need)
    """)
    con.execute(f"""
      CREATE OR REPLACE TABLE key_parts_c AS
      WITH r AS (
        SELECT b.*, r.rule_id AS rate_rule_id, r.method, r.value, r.r_ccy, coalesce(r.n_top, 0) AS n_top,
               CASE WHEN NOT b.known THEN NULL
                    WHEN b.ic = b.billing_currency THEN 'same_currency'
                    WHEN b.fx_policy = 'fixed' THEN 'fixed'
                    WHEN b.fx_policy = 'market' THEN 'market'
                    WHEN b.ic = b.pricing_currency AND b.pc_to_bc_rate IS NOT NULL AND b.pc_to_bc_rate <> 0 THEN 'microsoft'
                    ELSE 'market_fallback' END AS fx_kind
        FROM key_parts_b b
        LEFT JOIN rate_resolved r USING (k_customer, k_template, k_family, k_mcat, k_msub, k_product, k_prodsku, charge_date)),
      s AS (
        SELECT r.*,
               CASE r.fx_kind WHEN 'same_currency' THEN CAST(1 AS {DEC}) WHEN 'fixed' THEN r.fixed_fx_rate
                    WHEN 'microsoft' THEN ddiv(CAST(1 AS {DEC}), r.pc_to_bc_rate)
                    WHEN 'market' THEN lm.rate WHEN 'market_fallback' THEN lm.rate END AS fx_rate,
               r.rate_rule_id IS NOT NULL AND r.n_top = 1 AND NOT r.credit AS has_rule,
               CASE WHEN r.credit THEN 'line'
                    WHEN NOT (r.rate_rule_id IS NOT NULL AND r.n_top = 1) THEN NULL
                    WHEN r.method <> 'fixed_unit_price' THEN 'line'
                    WHEN r.r_ccy = r.ic THEN 'same_currency'
                    WHEN r.r_ccy = r.billing_currency THEN 'line'
                    ELSE 'market' END AS pfx_kind
        FROM r LEFT JOIN market lm ON lm.from_ccy = r.billing_currency AND lm.to_ccy = r.ic AND lm.need = r.fx_need
                                   AND r.fx_kind IN ('market', 'market_fallback'))
      SELECT s.*,
             CASE s.pfx_kind WHEN 'same_currency' THEN CAST(1 AS {DEC}) WHEN 'line' THEN s.fx_rate
                             WHEN 'market' THEN pm.rate END AS price_fx_rate
      FROM s LEFT JOIN market pm ON pm.from_ccy = s.r_ccy AND pm.to_ccy = s.ic AND pm.need = s.fx_need
                                 AND s.pfx_kind = 'market'
    """)
    # priced or not, and the invoice line it goes to (grouping by template, DESIGN §5 Invoice)
    con.execute("""
      CREATE OR REPLACE TABLE key_parts AS
      SELECT *,
             known AND fx_rate IS NOT NULL AND NOT (n_top > 1 AND NOT credit) AND (credit OR has_rule)
               AND price_fx_rate IS NOT NULL AS priced,
             CASE WHEN template = 'enterprise' THEN
                    'sub=' || coalesce(subscription_id, '') || '|'
                    || CASE WHEN source_kind = 'daily_usage' THEN 'meter=' || coalesce(meter_category, '')
                            ELSE 'sku=' || CASE WHEN coalesce(sku_id, '') = '' THEN coalesce(product_id, '')
                                                ELSE coalesce(product_id, '') || ':' || sku_id END END
                    || '|unit=' || coalesce(unit_id, 'Unassigned')
                  WHEN product_family = 'license' THEN
                    'sku=' || CASE WHEN coalesce(sku_id, '') = '' THEN coalesce(product_id, '')
                                   ELSE coalesce(product_id, '') || ':' || sku_id END
                  ELSE 'family=' || coalesce(product_family, '') END AS group_key
      FROM key_parts_c
    """)
    con.execute("CREATE OR REPLACE TABLE key_parts_j AS SELECT *, " + ", ".join(f"{nn(k, k)} AS jk_{k}" for k in KEY) + " FROM key_parts")
    ties = con.execute("SELECT coalesce(sum(n), 0) FROM key_parts WHERE n_top > 1 AND NOT credit").fetchone()[0]
    t = step("resolve_rules_on_keys", t)

    # ---- pass 2: every charge once: split, price, convert, and sum into invoice lines ------------------------
    def split(a: str) -> str:
        rest = " - ".join([a] + [f"coalesce(dmul({a}, {o}), 0)" for o in others])
        return f"CASE WHEN whole THEN {a} WHEN is_last THEN {rest} ELSE dmul({a}, share) END"

    on = " AND ".join(f"kp.jk_{k} = {nn('c.' + k, k)}" for k in KEY)
    con.execute(f"""
      CREATE OR REPLACE TABLE charge_lines AS
      WITH j AS (
        SELECT c.f, c.q AS c_q, c.cost AS c_cost, c.list AS c_list, c.unit_price AS c_up, c.pc_to_bc_rate AS c_rate, kp.*,
               kp.priced AND NOT kp.credit AND kp.method IN ('discount_off_list', 'markup_on_list') AS need_list,
               kp.priced AND (kp.credit OR kp.method IN ('markup_on_cost', 'margin_on_cost')) AS need_cost,
               kp.priced AND NOT kp.credit AND kp.method = 'fixed_unit_price' AS need_q
        FROM int_charges c JOIN key_parts_j kp ON {on} OFFSET 0),
      -- list = UnitPrice × q × rate × f, each product rounded, only where a list-based rule needs it
      l1 AS (SELECT *, CASE WHEN need_list AND c_list IS NULL THEN dmul(c_up, c_q) END AS up_q FROM j),
      l2 AS (SELECT *, CASE WHEN need_list AND c_list IS NULL THEN
                             CASE WHEN c_rate = 1 THEN up_q ELSE dmul(up_q, c_rate) END END AS up_q_rate FROM l1),
      l3 AS (SELECT *, CASE WHEN need_list THEN coalesce(c_list, CASE WHEN f = 1 THEN up_q_rate WHEN f = -1 THEN -up_q_rate
                                                                     ELSE dmul(up_q_rate, f) END) END AS list_w FROM l2),
      -- the part's share of what its price needs
      parts AS (
        SELECT pay_customer AS customer_id, ic AS currency, product_family, group_key, priced,
               credit, method, value, price_fx_rate, source_kind, f,
               CASE WHEN need_q THEN {split('c_q')} END AS q,
               CASE WHEN need_cost THEN {split('c_cost')} END AS cost,
               CASE WHEN need_list THEN {split('list_w')} END AS list
        FROM l3),
      priced AS (
        SELECT *,
               CASE WHEN NOT priced THEN NULL
                    WHEN credit THEN cost
                    WHEN method = 'markup_on_cost' THEN dmul(cost, CAST(1 AS {DEC}) + value)
                    WHEN method = 'margin_on_cost' THEN ddiv(cost, CAST(1 AS {DEC}) - value)
                    WHEN method = 'discount_off_list' THEN dmul(list, CAST(1 AS {DEC}) - value)
                    WHEN method = 'markup_on_list' THEN dmul(list, CAST(1 AS {DEC}) + value)
                    WHEN method = 'fixed_unit_price' THEN dmul(value, q) END AS p0
        FROM parts),
      fixed AS (SELECT * EXCLUDE (p0), CASE WHEN method = 'fixed_unit_price' AND NOT credit THEN dmul(p0, f) ELSE p0 END AS price_rule_ccy FROM priced)
      SELECT customer_id, currency,
             CASE WHEN credit THEN 'credit' WHEN f < 0 THEN 'refund'
                  WHEN source_kind = 'daily_usage' OR product_family = 'azure_usage' THEN 'usage'
                  WHEN product_family = 'license' THEN 'license' ELSE 'one_time' END AS line_type,
             group_key, product_family, priced,
             sum(CASE WHEN price_fx_rate = 1 THEN price_rule_ccy ELSE dmul(price_rule_ccy, price_fx_rate) END) AS amount_unrounded,
             count(*) AS parts
      FROM fixed GROUP BY ALL
    """)
    t = step("pass2_split_price_lines", t)
    unpriced = con.execute("SELECT coalesce(sum(parts), 0) FROM charge_lines WHERE NOT priced").fetchone()[0]
    counts = con.execute("""SELECT (SELECT sum(n) FROM charge_keys),
                                   (SELECT sum(parts) FROM charge_lines WHERE priced)""").fetchone()

    period_s = f"{y:04d}-{m:02d}"
    con.execute(f"""
      CREATE OR REPLACE TABLE psa_amounts AS
      WITH p AS (
        SELECT p.line_no, p.customer_id, cu.ic, p.project_code, p.currency, p.work_date,
               dmul(p.hours, p.hourly_rate) AS local
        FROM psa p JOIN customers cu ON cu.customer_id = p.customer_id
        WHERE p.billable AND strftime(p.work_date, '%Y-%m') = '{period_s}'),
      need AS (SELECT DISTINCT currency, ic, work_date FROM p WHERE currency <> ic),
      direct AS (
        SELECT n.currency, n.ic, n.work_date, arg_max(x.rate, x.date) AS rate
        FROM need n JOIN fx_rates x ON x.from_ccy = n.currency AND x.to_ccy = n.ic AND x.date <= n.work_date
        GROUP BY ALL),
      reverse AS (
        SELECT n.currency, n.ic, n.work_date, arg_max(x.rate, x.date) AS rate
        FROM need n JOIN fx_rates x ON x.from_ccy = n.ic AND x.to_ccy = n.currency AND x.date <= n.work_date
        GROUP BY ALL),
      inv AS (SELECT *, ddiv(CAST(1 AS {DEC}), rate) AS inv_rate FROM reverse)
      SELECT p.*, coalesce(d.rate, i.inv_rate) AS rate
      FROM p LEFT JOIN direct d USING (currency, ic, work_date) LEFT JOIN inv i USING (currency, ic, work_date)
    """)
    con.execute(f"""
      CREATE OR REPLACE TABLE all_lines AS
      -- charge lines of known customers (customers.csv spelling, exact)
      SELECT l.customer_id, l.currency, l.line_type, l.group_key, l.amount_unrounded
      FROM charge_lines l WHERE l.priced AND l.customer_id IN (SELECT customer_id FROM customers)
      UNION ALL
      -- PSA service lines: billable entries of the period, hours × rate, converted by market on the work date
      SELECT customer_id, ic, 'service', 'project=' || project_code,
             sum(CASE WHEN currency = ic THEN local ELSE dmul(local, rate) END)
      FROM psa_amounts GROUP BY customer_id, ic, project_code
      UNION ALL
      -- manual lines, as they are (credits negative), each its own line
      SELECT ml.customer_id, ml.currency, 'manual', 'manual#' || row_number() OVER (),
             CASE WHEN ml.line_type = 'credit' THEN dmul(abs(ml.quantity), -abs(ml.unit_price))
                  ELSE dmul(ml.quantity, ml.unit_price) END
      FROM manual_lines ml WHERE trim(ml.period) = '{period_s}' AND ml.customer_id IN (SELECT customer_id FROM customers)
    """)
    missing = con.execute("SELECT DISTINCT currency FROM all_lines WHERE currency NOT IN (SELECT currency FROM minor_units)").fetchall()
    if missing:
        raise SystemExit(f"currencies without a minor unit in MINOR_UNITS: {missing}")
    con.execute(f"""
      CREATE OR REPLACE TABLE rounded AS
      SELECT l.*, round_line(l.amount_unrounded, u.dp, '{rounding}') AS amount
      FROM all_lines l JOIN minor_units u USING (currency)
    """)
    # trial spend cap: charges beyond the cap (in the customer's own currency) offset by one line
    con.execute(f"""
      INSERT INTO rounded
      SELECT r.customer_id, r.currency, 'spend_cap_credit', 'spend_cap', cu.spend_cap - sum(r.amount),
             round_line(cu.spend_cap - sum(r.amount), any_value(u.dp), '{rounding}')
      FROM rounded r JOIN customers cu ON cu.customer_id = r.customer_id AND cu.ic = r.currency
      JOIN minor_units u ON u.currency = r.currency
      WHERE cu.template = 'trial' AND cu.spend_cap IS NOT NULL
        AND r.line_type IN ('usage', 'license', 'one_time', 'credit', 'refund')
      GROUP BY r.customer_id, r.currency, cu.spend_cap
      HAVING sum(r.amount) > cu.spend_cap
    """)
    con.execute(f"""
      CREATE OR REPLACE TABLE invoices AS
      SELECT {sql_str(prefix)} || '-{y:04d}{m:02d}-' || lpad(CAST(row_number() OVER (ORDER BY customer_id, currency) AS VARCHAR), 4, '0') AS invoice_number,
             customer_id, currency, count(*) AS line_count, CAST(sum(amount) AS {DEC}) AS subtotal
      FROM rounded GROUP BY customer_id, currency
    """)
    out = args.out
    fmt = "FORMAT PARQUET" if out.endswith(".parquet") else "FORMAT CSV, HEADER"
    con.execute(f"COPY (SELECT * FROM invoices ORDER BY customer_id, currency) TO {sql_str(out)} ({fmt})")
    if args.lines_out:
        con.execute(f"COPY (SELECT * FROM rounded ORDER BY ALL) TO {sql_str(args.lines_out)} (FORMAT CSV, HEADER)")
    t = step("invoice", t)
    n_inv, total = con.execute("SELECT count(*), sum(subtotal) FROM invoices").fetchone()
    summary = {
        "invoices": n_inv, "charges": counts[0],
        "distinct_keys": con.execute("SELECT count(*) FROM charge_keys").fetchone()[0],
        "key_parts": con.execute("SELECT count(*) FROM key_parts").fetchone()[0], "priced_parts": int(counts[1] or 0), "unpriced_parts": unpriced,
        "rate_rule_ties": ties, "azure_usage_source": source, "metered_non_azure_invoice_lines": n_meter_other,
        "usage_files": sum(len(v) for v in usage_files.values()), "recon_files": sum(len(v) for v in recon_files.values()),
        "timings_s": timings, "total_s": round(time.perf_counter() - t_all, 3),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
