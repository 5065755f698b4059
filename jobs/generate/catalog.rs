//! Fixed catalogues of `generate`: Azure meters with list prices in USD, the resource kinds that emit them,
//! licence products with monthly prices, and fictional company names. Prices are representative of public
//! Azure and Microsoft 365 list prices, not exact; identifiers have the real shapes (12-character product ids,
//! 4-character SKU ids kept as text).

/// How a meter's daily quantity is drawn: `Fixed(m, s)` is always `m·10^-s`; `Range(lo, hi, s)` draws a
/// mantissa uniformly in `lo..=hi` at scale `s`; `PerMonth` is 1/days-in-month (a monthly meter rated daily).
#[derive(Clone, Copy, Debug)]
pub enum Qty {
    Fixed(i64, u32),
    Range(i64, i64, u32),
    PerMonth,
    /// A fixed per-resource size (drawn once per resource in `lo..=hi` GB) spread over the month.
    SizePerMonth(i64, i64),
}

#[derive(Clone, Copy, Debug)]
pub struct Meter {
    pub category: &'static str,
    pub subcategory: &'static str,
    pub name: &'static str,
    pub meter_type: &'static str,
    pub unit: &'static str,
    pub unit_type: &'static str,
    /// `TermAndBillingCycle` on the invoice's Azure plan line (Microsoft puts the meter's unit label there).
    pub term_label: &'static str,
    pub unit_price: &'static str,
    pub product_id: &'static str,
    pub sku_id: &'static str,
    pub availability_id: &'static str,
    pub sku_name: &'static str,
    pub product_name: &'static str,
    pub meter_id: &'static str,
    pub qty: Qty,
}

macro_rules! meter {
    ($cat:expr, $sub:expr, $name:expr, $mtype:expr, $unit:expr, $utype:expr, $term:expr, $price:expr, $pid:expr, $sku:expr, $aid:expr, $skun:expr, $pname:expr, $mid:expr, $qty:expr) => {
        Meter {
            category: $cat,
            subcategory: $sub,
            name: $name,
            meter_type: $mtype,
            unit: $unit,
            unit_type: $utype,
            term_label: $term,
            unit_price: $price,
            product_id: $pid,
            sku_id: $sku,
            availability_id: $aid,
            sku_name: $skun,
            product_name: $pname,
            meter_id: $mid,
            qty: $qty,
        }
    };
}

pub const VM_D2SV5: usize = 0;
pub const PUBLIC_IP: usize = 1;
pub const BANDWIDTH: usize = 2;
pub const DISK_P10: usize = 3;
pub const BLOB_HOT: usize = 4;
pub const BLOB_WRITES: usize = 5;
pub const SQL_VCORE: usize = 6;
pub const APP_P1V3: usize = 7;
pub const LOG_INGEST: usize = 8;
pub const KV_OPS: usize = 9;
pub const FUNC_GBS: usize = 10;

pub const METERS: &[Meter] = &[
    meter!(
        "Virtual Machines",
        "Dv5 Series",
        "D2s v5",
        "1 Compute Hour",
        "1 Hour",
        "1 Hour",
        "1 Compute Hour",
        "0.096",
        "DZH318Z0C4NW",
        "00X8",
        "DZH318Z09QZM",
        "D2s v5",
        "Virtual Machines Dv5 Series",
        "2a0b9c7e-5d1f-4b8a-9f0e-3c6d2e1a4b70",
        Qty::Range(20, 24, 0)
    ),
    meter!(
        "Virtual Network",
        "IP Addresses",
        "Standard IPv4 Static Public IP",
        "1 Hour",
        "1 Hour",
        "1 Hour",
        "1 Hour",
        "0.005",
        "DZH318Z0BNVX",
        "0028",
        "DZH318Z0C9K1",
        "Standard",
        "IP Addresses",
        "6a9c1f24-77d3-4e0b-a3d6-0f1c8e9b2d45",
        Qty::Fixed(24, 0)
    ),
    meter!(
        "Bandwidth",
        "Rtn Preference: MGN",
        "Standard Data Transfer Out",
        "Data Transfer Out (GB)",
        "1 GB",
        "1 GB",
        "1 GB",
        "0.087",
        "DZH318Z0BNVX",
        "005J",
        "DZH318Z0C3B3",
        "Standard",
        "Bandwidth",
        "9995d93a-7d35-4d3f-9c69-7a7fea447ef4",
        Qty::Range(1, 4_000_000, 6)
    ),
    meter!(
        "Storage",
        "Premium SSD Managed Disks",
        "P10 LRS Disk",
        "1 Disk/Month",
        "1/Month",
        "1/Month",
        "1 Disk/Month",
        "19.71",
        "DZH318Z0BP04",
        "0030",
        "DZH318Z08NQT",
        "P10 LRS",
        "Premium SSD Managed Disks",
        "a2b1c0d9-4e3f-4a5b-8c7d-6e5f4a3b2c11",
        Qty::PerMonth
    ),
    meter!(
        "Storage",
        "Blob Storage",
        "Hot LRS Data Stored",
        "1 GB/Month",
        "1 GB/Month",
        "1 GB/Month",
        "1 GB/Month",
        "0.0184",
        "DZH318Z0BNWJ",
        "006J",
        "DZH318Z08V8J",
        "Hot LRS",
        "Blob Storage",
        "3f1e2d4c-8b7a-4c6d-9e0f-1a2b3c4d5e66",
        Qty::SizePerMonth(50, 4000)
    ),
    meter!(
        "Storage",
        "Tiered Block Blob",
        "Hot LRS Write Operations",
        "10K Write Operations",
        "10K",
        "10K",
        "10K",
        "0.055",
        "DZH318Z0BNWJ",
        "006J",
        "DZH318Z08V8J",
        "Hot LRS",
        "Blob Storage",
        "7c6b5a49-3d2e-4f10-b9a8-7c6d5e4f3a22",
        Qty::Range(1, 900_000, 4)
    ),
    meter!(
        "SQL Database",
        "General Purpose - Compute Gen5",
        "vCore",
        "1 vCore Hour",
        "1 Hour",
        "1 Hour",
        "1 vCore Hour",
        "0.2525",
        "DZH318Z0BQ4D",
        "0011",
        "DZH318Z08WTV",
        "General Purpose - Compute Gen5",
        "SQL Database General Purpose - Compute Gen5",
        "b8c7d6e5-f4a3-4b2c-9d1e-0f9e8d7c6b33",
        Qty::Fixed(48, 0)
    ),
    meter!(
        "Azure App Service",
        "Premium v3 Plan - Linux",
        "P1 v3 App",
        "1 Hour",
        "1 Hour",
        "1 Hour",
        "1 Hour",
        "0.169",
        "DZH318Z0BNXH",
        "00G2",
        "DZH318Z0BXKQ",
        "Premium v3 P1 v3",
        "Azure App Service Premium v3 Plan - Linux",
        "c9d8e7f6-a5b4-4c3d-8e2f-1a0b9c8d7e44",
        Qty::Fixed(24, 0)
    ),
    meter!(
        "Log Analytics",
        "Analytics Logs",
        "Analytics Logs Data Ingestion",
        "Data Ingestion (GB)",
        "1 GB",
        "1 GB",
        "1 GB",
        "2.30",
        "DZH318Z0BP0G",
        "001T",
        "DZH318Z08W9K",
        "Analytics Logs",
        "Log Analytics",
        "d0e9f8a7-b6c5-4d4e-9f3a-2b1c0d9e8f55",
        Qty::Range(1, 3_000_000, 6)
    ),
    meter!(
        "Key Vault",
        "Standard",
        "Standard Operations",
        "10K Operations",
        "10K",
        "10K",
        "10K",
        "0.03",
        "DZH318Z0BP2H",
        "0017",
        "DZH318Z08X5F",
        "Standard",
        "Key Vault",
        "e1f0a9b8-c7d6-4e5f-8a4b-3c2d1e0f9a66",
        Qty::Range(1, 60_000, 4)
    ),
    meter!(
        "Functions",
        "Standard",
        "Standard Execution Time",
        "Execution Time (GB Second)",
        "1 GB Second",
        "10",
        "Execution Time (GB Second)",
        "0.000016",
        "DZH318Z0BNWB",
        "0013",
        "DZH318Z0BQLR",
        "Functions",
        "Functions",
        "f2a1b0c9-d8e7-4f6a-9b5c-4d3e2f1a0b77",
        Qty::Range(1_000, 400_000, 0)
    ),
];

/// What a resource is: its ARM type, the service that reports it, and the meters it emits every day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Vm,
    Disk,
    Storage,
    Sql,
    AppService,
    Workspace,
    KeyVault,
    FunctionApp,
    PublicIp,
}

impl Kind {
    pub fn provider(self) -> &'static str {
        match self {
            Kind::Vm => "Microsoft.Compute/virtualMachines",
            Kind::Disk => "Microsoft.Compute/disks",
            Kind::Storage => "Microsoft.Storage/storageAccounts",
            Kind::Sql => "Microsoft.Sql/servers/databases",
            Kind::AppService => "Microsoft.Web/serverfarms",
            Kind::Workspace => "Microsoft.OperationalInsights/workspaces",
            Kind::KeyVault => "Microsoft.KeyVault/vaults",
            Kind::FunctionApp => "Microsoft.Web/sites",
            Kind::PublicIp => "Microsoft.Network/publicIPAddresses",
        }
    }

    pub fn consumed_service(self) -> &'static str {
        match self {
            Kind::Vm | Kind::Disk => "Microsoft.Compute",
            Kind::Storage => "Microsoft.Storage",
            Kind::Sql => "Microsoft.Sql",
            Kind::AppService | Kind::FunctionApp => "microsoft.web",
            Kind::Workspace => "Microsoft.OperationalInsights",
            Kind::KeyVault => "Microsoft.KeyVault",
            Kind::PublicIp => "Microsoft.Network",
        }
    }

    pub fn meters(self) -> &'static [usize] {
        match self {
            Kind::Vm => &[VM_D2SV5, BANDWIDTH],
            Kind::Disk => &[DISK_P10],
            Kind::Storage => &[BLOB_HOT, BLOB_WRITES],
            Kind::Sql => &[SQL_VCORE],
            Kind::AppService => &[APP_P1V3],
            Kind::Workspace => &[LOG_INGEST],
            Kind::KeyVault => &[KV_OPS],
            Kind::FunctionApp => &[FUNC_GBS],
            Kind::PublicIp => &[PUBLIC_IP],
        }
    }

    /// `AdditionalInfo` of a row (always two or more keys, or empty).
    pub fn additional_info(self) -> &'static str {
        match self {
            Kind::Vm => r#"{"ServiceType":"Standard_D2s_v5","VCPUs":2,"ImageType":"Canonical"}"#,
            Kind::Sql => r#"{"DatabaseName":"appdb","ServiceTier":"GeneralPurpose"}"#,
            _ => "",
        }
    }

    /// Short prefix of resource names of this kind.
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Vm => "vm",
            Kind::Disk => "disk",
            Kind::Storage => "st",
            Kind::Sql => "sqldb",
            Kind::AppService => "asp",
            Kind::Workspace => "log",
            Kind::KeyVault => "kv",
            Kind::FunctionApp => "func",
            Kind::PublicIp => "pip",
        }
    }
}

/// A licence product: `ProductId:SkuId`, name, monthly unit price in USD and in EUR.
#[derive(Clone, Copy, Debug)]
pub struct Licence {
    pub product_id: &'static str,
    pub sku_id: &'static str,
    pub availability_id: &'static str,
    pub name: &'static str,
    pub usd: &'static str,
    pub eur: &'static str,
}

pub const BUSINESS_BASIC: Licence = Licence {
    product_id: "CFQ7TTC0LH18",
    sku_id: "0001",
    availability_id: "CFQ7TTC0K5BF",
    name: "Microsoft 365 Business Basic",
    usd: "6.00",
    eur: "5.60",
};
pub const BUSINESS_STANDARD: Licence = Licence {
    product_id: "CFQ7TTC0LDPB",
    sku_id: "0001",
    availability_id: "CFQ7TTC0K5DM",
    name: "Microsoft 365 Business Standard",
    usd: "12.50",
    eur: "11.70",
};
pub const BUSINESS_PREMIUM: Licence = Licence {
    product_id: "CFQ7TTC0LCHC",
    sku_id: "0002",
    availability_id: "CFQ7TTC0K5BJ",
    name: "Microsoft 365 Business Premium",
    usd: "22.00",
    eur: "20.60",
};
pub const M365_E3: Licence = Licence {
    product_id: "CFQ7TTC0LFLX",
    sku_id: "0001",
    availability_id: "CFQ7TTC0K61L",
    name: "Microsoft 365 E3",
    usd: "36.00",
    eur: "33.70",
};
pub const EXCHANGE_P1: Licence = Licence {
    product_id: "CFQ7TTC0LH16",
    sku_id: "0001",
    availability_id: "CFQ7TTC0K59S",
    name: "Exchange Online (Plan 1)",
    usd: "4.00",
    eur: "3.70",
};

/// Fictional company names (Microsoft's sample names); beyond the list a number is appended.
pub const COMPANIES: &[(&str, &str)] = &[
    ("Contoso Holdings AG", "DE"),
    ("Contoso Logistics UK Ltd", "GB"),
    ("Northwind Traders Inc.", "US"),
    ("Tailspin Toys LLC", "US"),
    ("Wide World Importers KK", "JP"),
    ("Woodgrove Bank, N.A.", "US"),
    ("Fabrikam Fertigung GmbH", "AT"),
    ("Lucerne Publishing B.V.", "NL"),
    ("Adventure Works Cycles Inc.", "US"),
    ("Coho Winery Ltd", "GB"),
    ("Alpine Ski House Inc.", "CA"),
    ("Trey Research Ltd", "IE"),
    ("Margie's Travel LLC", "US"),
    ("Proseware SAS", "FR"),
    ("Fourth Coffee Inc.", "US"),
    ("Litware S.L.", "ES"),
    ("Relecloud Works Ltd", "GB"),
    ("Blue Yonder Airlines Inc.", "US"),
    ("Humongous Insurance AG", "CH"),
    ("VanArsdel Ltd", "US"),
];
