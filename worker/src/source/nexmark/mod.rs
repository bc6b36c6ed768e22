//! Nexmark source: one table (`person`, `auction` or `bid`) of the Nexmark benchmark's generated
//! auction site, with the Beam/Flink Nexmark generator's rules ([`model`]).
//!
//! The stream is events `n = 0, 1, 2, ...` (bounded by `maxEvents`); event `n` is a pure function
//! of `n`, so a replay regenerates identical rows and every `nexmark` source with the same options
//! sees the same stream. Event `n` belongs to partition `n % partitions`; partition `p`'s k-th
//! event is `n = p + k * partitions`. A source reads only the events of its table, so a query over
//! `person`, `auction` and `bid` declares three sources over one stream (the engine's model is one
//! source per table; a single `event` table of three structs, as Flink's connector has, would need
//! a view to put a watermark on a top-level column).
//!
//! With `eventsPerSecond`, events become available at that rate from the first batch's wall time
//! (kept in every range, as the rate source); without it, as fast as batches read them, at most
//! [`EVENTS_PER_BATCH`] per task per batch (all of `maxEvents` under the `once` trigger). Event
//! times (`dateTime`) do not depend on wall time:
//! `2015-07-15T00:00:00Z + n / eventsPerSecond` (10,000/s when unset), as the reference's
//! deterministic mode.
//!
//! Schemas (column names as Flink Nexmark's DDL; times are `Timestamp(µs, UTC)` at ms precision,
//! prices in cents):
//! - `person`: `id, name, emailAddress, creditCard, city, state, dateTime, extra`
//! - `auction`: `id, itemName, description, initialBid, reserve, dateTime, expires, seller,
//!   category, extra`
//! - `bid`: `auction, bidder, price, channel, url, dateTime, extra`

mod java_random;
pub mod model;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sluice_crds::{NexmarkSourceSpec, NexmarkTable};

use crate::error::Result;
use crate::schema::timestamp_type;
use crate::source::{PlanLimit, Range, ReadOutput, Source, SourceTask, decode_range, encode_range};
use model::Kind;

/// Events per task per batch when the source is not rate limited.
pub const EVENTS_PER_BATCH: u64 = 100_000;

/// A nexmark range: this partition's events `start..end` (k indices), and the stream's wall start.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NexmarkRange {
    /// Wall time of the first batch, ms since the Unix epoch (paces `eventsPerSecond`).
    pub start_ms: i64,
    /// First k of the range (this partition's k-th event is `task + k * partitions`).
    pub start: u64,
    /// One past the last k.
    pub end: u64,
}

/// The configured nexmark source.
pub struct NexmarkSource {
    name: String,
    table: NexmarkTable,
    events_per_second: Option<u64>,
    max_events: Option<u64>,
    partitions: u32,
    schema: SchemaRef,
}

impl NexmarkSource {
    /// The source named `name` (its table name in SQL) over `spec`'s table of the event stream.
    pub fn new(name: &str, spec: &NexmarkSourceSpec) -> Self {
        Self {
            name: name.to_string(),
            table: spec.table,
            events_per_second: spec.events_per_second.map(|r| r.max(1)),
            max_events: spec.max_events,
            partitions: spec.partitions.max(1),
            schema: table_schema(spec.table),
        }
    }
}

/// The Arrow schema of a nexmark table.
pub fn table_schema(table: NexmarkTable) -> SchemaRef {
    let long = |name: &str| Field::new(name, DataType::Int64, false);
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    let time = |name: &str| Field::new(name, timestamp_type(), false);
    Arc::new(Schema::new(match table {
        NexmarkTable::Person => vec![
            long("id"),
            text("name"),
            text("emailAddress"),
            text("creditCard"),
            text("city"),
            text("state"),
            time("dateTime"),
            text("extra"),
        ],
        NexmarkTable::Auction => vec![
            long("id"),
            text("itemName"),
            text("description"),
            long("initialBid"),
            long("reserve"),
            time("dateTime"),
            time("expires"),
            long("seller"),
            long("category"),
            text("extra"),
        ],
        NexmarkTable::Bid => vec![
            long("auction"),
            long("bidder"),
            long("price"),
            text("channel"),
            text("url"),
            time("dateTime"),
            text("extra"),
        ],
    }))
}

/// The rows of `table` among events `events` (event numbers, ascending), in the table's schema.
/// Events of other tables are skipped without being generated.
///
/// # Errors
/// Only if the columns do not fit the schema (a bug).
pub fn table_batch(
    table: NexmarkTable,
    events_per_second: Option<u64>,
    events: impl Iterator<Item = u64>,
) -> Result<RecordBatch> {
    let rate = events_per_second.unwrap_or(model::DEFAULT_EVENTS_PER_SECOND);
    let micros = |ms: i64| ms.saturating_mul(1000);
    let schema = table_schema(table);
    let columns: Vec<ArrayRef> = match table {
        NexmarkTable::Person => {
            let mut c = PersonColumns::default();
            for n in events.filter(|n| model::kind_of(*n) == Kind::Person) {
                let p = model::person(n, rate);
                c.id.append_value(p.id);
                c.name.append_value(&p.name);
                c.email.append_value(&p.email_address);
                c.card.append_value(&p.credit_card);
                c.city.append_value(&p.city);
                c.state.append_value(&p.state);
                c.time.append_value(micros(p.date_time));
                c.extra.append_value(&p.extra);
            }
            vec![
                Arc::new(c.id.finish()),
                Arc::new(c.name.finish()),
                Arc::new(c.email.finish()),
                Arc::new(c.card.finish()),
                Arc::new(c.city.finish()),
                Arc::new(c.state.finish()),
                Arc::new(c.time.finish().with_timezone("UTC")),
                Arc::new(c.extra.finish()),
            ]
        }
        NexmarkTable::Auction => {
            let mut c = AuctionColumns::default();
            for n in events.filter(|n| model::kind_of(*n) == Kind::Auction) {
                let a = model::auction(n, rate);
                c.id.append_value(a.id);
                c.item_name.append_value(&a.item_name);
                c.description.append_value(&a.description);
                c.initial_bid.append_value(a.initial_bid);
                c.reserve.append_value(a.reserve);
                c.time.append_value(micros(a.date_time));
                c.expires.append_value(micros(a.expires));
                c.seller.append_value(a.seller);
                c.category.append_value(a.category);
                c.extra.append_value(&a.extra);
            }
            vec![
                Arc::new(c.id.finish()),
                Arc::new(c.item_name.finish()),
                Arc::new(c.description.finish()),
                Arc::new(c.initial_bid.finish()),
                Arc::new(c.reserve.finish()),
                Arc::new(c.time.finish().with_timezone("UTC")),
                Arc::new(c.expires.finish().with_timezone("UTC")),
                Arc::new(c.seller.finish()),
                Arc::new(c.category.finish()),
                Arc::new(c.extra.finish()),
            ]
        }
        NexmarkTable::Bid => {
            let mut c = BidColumns::default();
            for n in events.filter(|n| model::kind_of(*n) == Kind::Bid) {
                let b = model::bid(n, rate);
                c.auction.append_value(b.auction);
                c.bidder.append_value(b.bidder);
                c.price.append_value(b.price);
                c.channel.append_value(&b.channel);
                c.url.append_value(&b.url);
                c.time.append_value(micros(b.date_time));
                c.extra.append_value(&b.extra);
            }
            vec![
                Arc::new(c.auction.finish()),
                Arc::new(c.bidder.finish()),
                Arc::new(c.price.finish()),
                Arc::new(c.channel.finish()),
                Arc::new(c.url.finish()),
                Arc::new(c.time.finish().with_timezone("UTC")),
                Arc::new(c.extra.finish()),
            ]
        }
    };
    Ok(RecordBatch::try_new(schema, columns)?)
}

#[derive(Default)]
struct PersonColumns {
    id: Int64Builder,
    name: StringBuilder,
    email: StringBuilder,
    card: StringBuilder,
    city: StringBuilder,
    state: StringBuilder,
    time: TimestampMicrosecondBuilder,
    extra: StringBuilder,
}

#[derive(Default)]
struct AuctionColumns {
    id: Int64Builder,
    item_name: StringBuilder,
    description: StringBuilder,
    initial_bid: Int64Builder,
    reserve: Int64Builder,
    time: TimestampMicrosecondBuilder,
    expires: TimestampMicrosecondBuilder,
    seller: Int64Builder,
    category: Int64Builder,
    extra: StringBuilder,
}

#[derive(Default)]
struct BidColumns {
    auction: Int64Builder,
    bidder: Int64Builder,
    price: Int64Builder,
    channel: StringBuilder,
    url: StringBuilder,
    time: TimestampMicrosecondBuilder,
    extra: StringBuilder,
}

#[async_trait]
impl Source for NexmarkSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn partitions(&self) -> u32 {
        self.partitions
    }
    async fn open(&self, task: u32, logged: &[Range]) -> Result<Box<dyn SourceTask>> {
        let last = logged
            .last()
            .map(|range| decode_range::<NexmarkRange>(&self.name, range))
            .transpose()?;
        Ok(Box::new(NexmarkTask {
            name: self.name.clone(),
            table: self.table,
            events_per_second: self.events_per_second,
            max_events: self.max_events,
            partitions: u64::from(self.partitions),
            task: u64::from(task),
            start_ms: last.as_ref().map(|r| r.start_ms).unwrap_or_else(now_ms),
            next: last.map(|r| r.end).unwrap_or(0),
            frozen: None,
        }))
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

struct NexmarkTask {
    name: String,
    table: NexmarkTable,
    events_per_second: Option<u64>,
    max_events: Option<u64>,
    partitions: u64,
    task: u64,
    start_ms: i64,
    /// Next k to plan.
    next: u64,
    /// The end (k) fixed by `freeze`.
    frozen: Option<u64>,
}

impl NexmarkTask {
    /// This partition's events (k count) with event number below `total`.
    fn count_below(&self, total: u64) -> u64 {
        if total <= self.task {
            0
        } else {
            (total - self.task).div_ceil(self.partitions)
        }
    }

    /// This partition's events (k count) available at wall time `at_ms`: paced by
    /// `eventsPerSecond` from the first batch, bounded by `maxEvents`.
    fn available(&self, at_ms: i64) -> u64 {
        let total = match self.events_per_second {
            Some(rate) => {
                let elapsed_ms = (at_ms - self.start_ms).max(0) as u128;
                u64::try_from(elapsed_ms * u128::from(rate) / 1000).unwrap_or(u64::MAX)
            }
            None => u64::MAX,
        };
        self.count_below(self.max_events.map_or(total, |max| total.min(max)))
    }
}

#[async_trait]
impl SourceTask for NexmarkTask {
    async fn freeze(&mut self) -> Result<()> {
        self.frozen = Some(self.available(now_ms()));
        Ok(())
    }

    async fn plan(&mut self, limit: PlanLimit) -> Result<Option<Range>> {
        let mut end = self.available(now_ms());
        if let Some(frozen) = self.frozen {
            end = end.min(frozen);
        }
        // Unpaced, the stream is all available at once: cap a batch (and an unbounded stream
        // even under `once`, which would otherwise never finish planning).
        let capped = limit == PlanLimit::PerTrigger || self.max_events.is_none();
        if self.events_per_second.is_none() && capped {
            end = end.min(self.next.saturating_add(EVENTS_PER_BATCH));
        }
        if end <= self.next {
            return Ok(None);
        }
        let range = NexmarkRange {
            start_ms: self.start_ms,
            start: self.next,
            end,
        };
        self.next = end;
        encode_range(&range).map(Some)
    }

    async fn read(&mut self, range: &Range) -> Result<ReadOutput> {
        let range: NexmarkRange = decode_range(&self.name, range)?;
        let (task, partitions) = (self.task, self.partitions);
        let events = (range.start..range.end).map(move |k| task + k * partitions);
        let batch = table_batch(self.table, self.events_per_second, events)?;
        Ok(ReadOutput {
            batches: vec![batch],
            ..ReadOutput::default()
        })
    }

    /// Consecutive ranges of one task are one run of events: `[earlier.start, later.end)`.
    fn merge(&self, earlier: &Range, later: &Range) -> Option<Range> {
        let earlier: NexmarkRange = serde_json::from_value(earlier.clone()).ok()?;
        let later: NexmarkRange = serde_json::from_value(later.clone()).ok()?;
        encode_range(&NexmarkRange {
            start_ms: earlier.start_ms,
            start: earlier.start,
            end: later.end,
        })
        .ok()
    }

    /// This table's share of the events available and not planned (its 1, 3 or 46 in 50);
    /// unknown (unbounded) for an unpaced stream without `maxEvents`.
    fn backlog(&self) -> Option<u64> {
        if self.events_per_second.is_none() && self.max_events.is_none() {
            return None;
        }
        let events = self.available(now_ms()).saturating_sub(self.next);
        let share = match self.table {
            NexmarkTable::Person => model::PERSON_PROPORTION,
            NexmarkTable::Auction => model::AUCTION_PROPORTION,
            NexmarkTable::Bid => model::BID_PROPORTION,
        };
        Some(events.saturating_mul(share) / model::PROPORTION_DENOMINATOR)
    }
}
