//! The Nexmark event model: which event an offset is and its fields, as the Beam Nexmark generator
//! (`org.apache.beam.sdk.nexmark.sources.generator`: `GeneratorConfig`, `PersonGenerator`,
//! `AuctionGenerator`, `BidGenerator`, `PriceGenerator`, `StringsGenerator`) makes them with its
//! default configuration and one generator.
//!
//! Event `n` (0, 1, 2, ...) is a person when `n % 50 == 0`, an auction when `n % 50` is 1..=3 and a
//! bid otherwise (the 1:3:46 mix). Its fields are drawn from a `java.util.Random` seeded with `n`,
//! in the reference's order, so they are the reference's fields; its time is
//! `baseTime + n * 1000 / eventsPerSecond` ms. Bids also get Flink Nexmark's `channel` and `url`
//! (used by its queries q14 and later), drawn after the Beam fields so these stay identical.

use super::java_random::JavaRandom;

/// Person events per 50 (`GeneratorConfig.PERSON_PROPORTION`).
pub const PERSON_PROPORTION: u64 = 1;
/// Auction events per 50.
pub const AUCTION_PROPORTION: u64 = 3;
/// Bid events per 50.
pub const BID_PROPORTION: u64 = 46;
/// Events per round of the mix.
pub const PROPORTION_DENOMINATOR: u64 = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION;

/// First person id; ids start high so that queries find matches on small data
/// (`GeneratorConfig.FIRST_PERSON_ID`).
pub const FIRST_PERSON_ID: i64 = 1000;
/// First auction id (`GeneratorConfig.FIRST_AUCTION_ID`).
pub const FIRST_AUCTION_ID: i64 = 1000;
/// First category id (`GeneratorConfig.FIRST_CATEGORY_ID`).
pub const FIRST_CATEGORY_ID: i64 = 10;

/// Event time of event 0: Beam's `NexmarkUtils.BASE_TIME`, 2015-07-15T00:00:00Z, in ms.
pub const BASE_TIME_MS: i64 = 1_436_918_400_000;
/// The reference's default rate (`NexmarkConfiguration.firstEventRate`), used for event times when
/// the source is not rate limited.
pub const DEFAULT_EVENTS_PER_SECOND: u64 = 10_000;

// NexmarkConfiguration defaults.
const NUM_ACTIVE_PEOPLE: i64 = 1000;
const NUM_IN_FLIGHT_AUCTIONS: i64 = 100;
const HOT_AUCTION_RATIO: i32 = 2;
const HOT_SELLERS_RATIO: i32 = 4;
const HOT_BIDDERS_RATIO: i32 = 4;
const AVG_PERSON_BYTE_SIZE: i32 = 200;
const AVG_AUCTION_BYTE_SIZE: i32 = 500;
const AVG_BID_BYTE_SIZE: i32 = 100;

// Generator constants.
const PERSON_ID_LEAD: i64 = 10;
const AUCTION_ID_LEAD: i64 = 10;
const HOT_SELLER_BATCH: i64 = 100;
const HOT_AUCTION_BATCH: i64 = 100;
const HOT_BIDDER_BATCH: i64 = 100;
const NUM_CATEGORIES: i32 = 5;
const MIN_STRING_LENGTH: i32 = 3;

const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];

// Flink Nexmark's bid channels.
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const HOT_CHANNELS_RATIO: i32 = 2;
const CHANNELS_NUMBER: i32 = 10_000;

/// The kind of event `n` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Person,
    Auction,
    Bid,
}

/// The kind of event number `n` (the 1:3:46 mix).
pub fn kind_of(n: u64) -> Kind {
    let rem = n % PROPORTION_DENOMINATOR;
    if rem < PERSON_PROPORTION {
        Kind::Person
    } else if rem < PERSON_PROPORTION + AUCTION_PROPORTION {
        Kind::Auction
    } else {
        Kind::Bid
    }
}

/// Event time of event `n` in ms since the epoch, at `events_per_second` (> 0).
pub fn event_time_ms(n: u64, events_per_second: u64) -> i64 {
    let offset = u128::from(n) * 1000 / u128::from(events_per_second.max(1));
    BASE_TIME_MS.saturating_add(i64::try_from(offset).unwrap_or(i64::MAX))
}

/// A new user.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    pub id: i64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: String,
    pub state: String,
    /// ms since the epoch.
    pub date_time: i64,
    pub extra: String,
}

/// A new auction.
#[derive(Debug, Clone, PartialEq)]
pub struct Auction {
    pub id: i64,
    pub item_name: String,
    pub description: String,
    /// Cents.
    pub initial_bid: i64,
    /// Cents.
    pub reserve: i64,
    /// ms since the epoch.
    pub date_time: i64,
    /// ms since the epoch.
    pub expires: i64,
    pub seller: i64,
    pub category: i64,
    pub extra: String,
}

/// A bid on an auction.
#[derive(Debug, Clone, PartialEq)]
pub struct Bid {
    pub auction: i64,
    pub bidder: i64,
    /// Cents.
    pub price: i64,
    pub channel: String,
    pub url: String,
    /// ms since the epoch.
    pub date_time: i64,
    pub extra: String,
}

/// Last person id (base 0) at event `n`: the current one if `n` is a person
/// (`PersonGenerator.lastBase0PersonId`).
pub fn last_base0_person_id(n: i64) -> i64 {
    let denominator = PROPORTION_DENOMINATOR as i64;
    let person = PERSON_PROPORTION as i64;
    let epoch = n / denominator;
    let offset = (n % denominator).min(person - 1);
    epoch * person + offset
}

/// Last auction id (base 0) at event `n`: the current one if `n` is an auction
/// (`AuctionGenerator.lastBase0AuctionId`); -1 before the first auction.
pub fn last_base0_auction_id(n: i64) -> i64 {
    let denominator = PROPORTION_DENOMINATOR as i64;
    let person = PERSON_PROPORTION as i64;
    let auction = AUCTION_PROPORTION as i64;
    let mut epoch = n / denominator;
    let mut offset = n % denominator;
    if offset < person {
        epoch -= 1;
        offset = auction - 1;
    } else if offset >= person + auction {
        offset = auction - 1;
    } else {
        offset -= person;
    }
    epoch * auction + offset
}

/// `LongGenerator.nextLong`: `[0, n)`.
fn next_long(random: &mut JavaRandom, n: i64) -> i64 {
    if n < i64::from(i32::MAX) {
        i64::from(random.next_int_bounded(n as i32))
    } else {
        // The reference's (skewed) fallback for huge ranges.
        (random.next_long() % n).wrapping_abs()
    }
}

/// A random active person (base 0), a few ids ahead allowed (`nextBase0PersonId`).
fn next_base0_person_id(n: i64, random: &mut JavaRandom) -> i64 {
    let num_people = last_base0_person_id(n) + 1;
    let active = num_people.min(NUM_ACTIVE_PEOPLE);
    num_people - active + next_long(random, active + PERSON_ID_LEAD)
}

/// A random in-flight auction (base 0), a few ids ahead allowed (`nextBase0AuctionId`).
fn next_base0_auction_id(n: i64, random: &mut JavaRandom) -> i64 {
    let max = last_base0_auction_id(n);
    let min = (max - NUM_IN_FLIGHT_AUCTIONS).max(0);
    min + next_long(random, max - min + 1 + AUCTION_ID_LEAD)
}

/// `PriceGenerator.nextPrice`: cents, log-uniform in [100, 100 000 000].
fn next_price(random: &mut JavaRandom) -> i64 {
    java_round(10f64.powf(random.next_double() * 6.0) * 100.0)
}

/// Java's `Math.round(double)`: nearest, ties up.
fn java_round(x: f64) -> i64 {
    (x + 0.5).floor() as i64
}

/// `StringsGenerator.nextString`: 3 to `max_length - 1` letters, about 1 in 13 a `special`
/// (space), trimmed.
fn next_string(random: &mut JavaRandom, max_length: i32, special: char) -> String {
    let len = MIN_STRING_LENGTH + random.next_int_bounded(max_length - MIN_STRING_LENGTH);
    let mut s = String::with_capacity(len as usize);
    for _ in 0..len {
        if random.next_int_bounded(13) == 0 {
            s.push(special);
        } else {
            s.push(char::from(b'a' + random.next_int_bounded(26) as u8));
        }
    }
    // Java's trim() removes spaces (and control characters) at both ends.
    s.trim_matches(|c: char| c <= ' ').to_string()
}

/// `StringsGenerator.nextExactString`: `length` characters, six per `nextInt()`. A negative int
/// gives characters below `a` (`H`..`a`) in the reference too.
fn next_exact_string(random: &mut JavaRandom, length: i32) -> String {
    let mut s = String::with_capacity(length.max(0) as usize);
    let mut rnd = 0i32;
    let mut left = 0;
    for _ in 0..length {
        if left == 0 {
            rnd = random.next_int();
            left = 6;
        }
        s.push(char::from((i32::from(b'a') + rnd % 26) as u8));
        rnd /= 26;
        left -= 1;
    }
    s
}

/// `StringsGenerator.nextExtra`: padding so that `current_size + len` averages `average`.
fn next_extra(random: &mut JavaRandom, current_size: i32, average: i32) -> String {
    if current_size > average {
        return String::new();
    }
    let wanted = average - current_size;
    let delta = java_round(f64::from(wanted) * 0.2) as i32;
    let min = wanted - delta;
    let size = min
        + if delta == 0 {
            0
        } else {
            random.next_int_bounded(2 * delta)
        };
    next_exact_string(random, size)
}

/// `list[random.nextInt(list.length)]`, as the Java generator picks; the index is in bounds by
/// construction.
fn pick(random: &mut JavaRandom, list: &[&'static str]) -> &'static str {
    let i = random.next_int_bounded(list.len() as i32) as usize;
    list.get(i).copied().unwrap_or_default()
}

/// Person event `n` (`PersonGenerator.nextPerson`).
pub fn person(n: u64, events_per_second: u64) -> Person {
    let id = n as i64;
    let mut random = JavaRandom::new(id);
    let name = format!(
        "{} {}",
        pick(&mut random, &FIRST_NAMES),
        pick(&mut random, &LAST_NAMES)
    );
    let email_address = format!(
        "{}@{}.com",
        next_string(&mut random, 7, ' '),
        next_string(&mut random, 5, ' ')
    );
    let credit_card = (0..4)
        .map(|_| format!("{:04}", random.next_int_bounded(10_000)))
        .collect::<Vec<_>>()
        .join(" ");
    let city = pick(&mut random, &US_CITIES).to_string();
    let state = pick(&mut random, &US_STATES).to_string();
    let size = 8 + name.len() + email_address.len() + credit_card.len() + city.len() + state.len();
    let extra = next_extra(&mut random, size as i32, AVG_PERSON_BYTE_SIZE);
    Person {
        id: last_base0_person_id(id) + FIRST_PERSON_ID,
        name,
        email_address,
        credit_card,
        city,
        state,
        date_time: event_time_ms(n, events_per_second),
        extra,
    }
}

/// Auction event `n` (`AuctionGenerator.nextAuction`; with one generator the events generated so
/// far are `n`).
pub fn auction(n: u64, events_per_second: u64) -> Auction {
    let id = n as i64;
    let mut random = JavaRandom::new(id);
    let timestamp = event_time_ms(n, events_per_second);
    // P(hot seller) = 1 - 1/hotSellersRatio: the first of the last 100 people.
    let seller = if random.next_int_bounded(HOT_SELLERS_RATIO) > 0 {
        (last_base0_person_id(id) / HOT_SELLER_BATCH) * HOT_SELLER_BATCH
    } else {
        next_base0_person_id(id, &mut random)
    } + FIRST_PERSON_ID;
    let category = FIRST_CATEGORY_ID + i64::from(random.next_int_bounded(NUM_CATEGORIES));
    let initial_bid = next_price(&mut random);
    // Auctions last on average until numInFlightAuctions more auctions have been created.
    let events_for_auctions =
        (NUM_IN_FLIGHT_AUCTIONS as u64 * PROPORTION_DENOMINATOR) / AUCTION_PROPORTION;
    let horizon_ms = event_time_ms(n + events_for_auctions, events_per_second) - timestamp;
    let expires = timestamp + 1 + next_long(&mut random, (horizon_ms * 2).max(1));
    let item_name = next_string(&mut random, 20, ' ');
    let description = next_string(&mut random, 100, ' ');
    let reserve = initial_bid + next_price(&mut random);
    let size = 8 + item_name.len() + description.len() + 8 + 8 + 8 + 8 + 8;
    let extra = next_extra(&mut random, size as i32, AVG_AUCTION_BYTE_SIZE);
    Auction {
        id: last_base0_auction_id(id) + FIRST_AUCTION_ID,
        item_name,
        description,
        initial_bid,
        reserve,
        date_time: timestamp,
        expires,
        seller,
        category,
        extra,
    }
}

/// Bid event `n` (`BidGenerator.nextBid`, plus Flink Nexmark's channel and url).
pub fn bid(n: u64, events_per_second: u64) -> Bid {
    let id = n as i64;
    let mut random = JavaRandom::new(id);
    // P(hot auction) = 1 - 1/hotAuctionRatio: the first of the last 100 auctions.
    let auction = if random.next_int_bounded(HOT_AUCTION_RATIO) > 0 {
        (last_base0_auction_id(id) / HOT_AUCTION_BATCH) * HOT_AUCTION_BATCH
    } else {
        next_base0_auction_id(id, &mut random)
    } + FIRST_AUCTION_ID;
    // P(hot bidder) = 1 - 1/hotBiddersRatio: the second of the last 100 people (not a hot seller).
    let bidder = if random.next_int_bounded(HOT_BIDDERS_RATIO) > 0 {
        (last_base0_person_id(id) / HOT_BIDDER_BATCH) * HOT_BIDDER_BATCH + 1
    } else {
        next_base0_person_id(id, &mut random)
    } + FIRST_PERSON_ID;
    let price = next_price(&mut random);
    let extra = next_extra(&mut random, 8 + 8 + 8 + 8, AVG_BID_BYTE_SIZE);
    let (channel, url) = if random.next_int_bounded(HOT_CHANNELS_RATIO) > 0 {
        let i = random.next_int_bounded(HOT_CHANNELS.len() as i32);
        // Hot channels' urls are seeded apart from the numbered channels' (seeds >= 0).
        (
            HOT_CHANNELS
                .get(i as usize)
                .copied()
                .unwrap_or_default()
                .to_string(),
            base_url(-1 - i64::from(i)),
        )
    } else {
        let c = random.next_int_bounded(CHANNELS_NUMBER);
        (format!("channel-{c}"), channel_url(c))
    };
    Bid {
        auction,
        bidder,
        price,
        channel,
        url,
        date_time: event_time_ms(n, events_per_second),
        extra,
    }
}

/// Flink Nexmark's item url, from a `Random(seed)` instead of an unseeded one (deterministic).
fn base_url(seed: i64) -> String {
    let mut random = JavaRandom::new(seed);
    base_url_from(&mut random)
}

fn base_url_from(random: &mut JavaRandom) -> String {
    let a = next_string(random, 5, '_');
    let b = next_string(random, 5, '_');
    let c = next_string(random, 5, '_');
    format!("https://www.nexmark.com/{a}/{b}/{c}/item.htm?query=1")
}

/// Flink Nexmark's url of numbered channel `c`: 9 in 10 carry `&channel_id=`.
fn channel_url(c: i32) -> String {
    let mut random = JavaRandom::new(i64::from(c));
    let url = base_url_from(&mut random);
    if random.next_int_bounded(10) > 0 {
        format!("{url}&channel_id={}", c.reverse_bits().wrapping_abs())
    } else {
        url
    }
}
