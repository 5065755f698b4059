//! The stages of cspbill: pure functions from lazy frames to lazy frames.
//!
//! No stage reads a file, the network, the clock or the environment: the job (`jobs/`) reads inputs, builds the
//! lazy frames, passes a [`RunContext`], and collects or sinks the plans a stage returns. Rows that fail are data:
//! a stage returns its good frame and its rejected or errors frame side by side.
//!
//! Data flow (DESIGN §5): `ingest` (stg_*) → `charges` (int_charges) → `allocate` (int_charges_allocated,
//! int_tag_compliance) → `rate` (int_charges_rated) → `invoice` (fct_*) and `anomalies` (rpt_anomalies).

pub mod allocate;
pub mod anomalies;
pub mod charges;
pub mod compare;
pub mod context;
pub mod currency;
pub mod decimal;
pub mod error;
pub mod family;
pub mod focus;
pub mod ingest;
pub mod invariants;
pub mod invoice;
pub mod ledger;
pub mod lineid;
pub mod privacy;
pub mod rate;
pub mod reference;
pub mod source;
pub mod testing;

pub use context::{
    AzureUsageSource, FxDatePolicy, Period, Policies, ProrationPolicy, RoundingMode, RunContext, RunMode,
};
pub use error::{ConfigError, PipelineError, Result};
