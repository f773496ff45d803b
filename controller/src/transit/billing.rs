//! What a transit allocation costs: pure integer arithmetic, no clock, no
//! floating point.
//!
//! The rule (the same text is in `transit.proto` and ARCHITECTURE.md):
//!
//! - billable seconds = max(0, (end - start) - free period), where start
//!   is when the transit host was handed over and end its release (or the
//!   time of the reading, for an allocation still running);
//! - billable days = billable seconds / 86 400 rounded **up**: every
//!   started day counts as a whole day ("pro rata, day by day");
//! - a daily price costs `price * days`;
//! - a monthly price costs `price * 12 * days / 365`, the division done
//!   once, at the end, rounding half up (a month is 365/12 days, whatever
//!   the calendar month: the same stay costs the same in February and in
//!   August).
//!
//! Amounts are integer minor units of the server's currency; the
//! arithmetic is done in `u128` so that no price and duration the API
//! accepts can overflow.

/// Seconds in a billed day.
pub const DAY_SECONDS: u64 = 86_400;

/// How the server's own price is expressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PricePeriod {
    Month,
    Day,
}

impl PricePeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            PricePeriod::Month => "month",
            PricePeriod::Day => "day",
        }
    }

    pub fn parse(text: &str) -> Option<PricePeriod> {
        [PricePeriod::Month, PricePeriod::Day]
            .into_iter()
            .find(|p| p.as_str() == text)
    }
}

/// The server's own price: what a transit host costs after the free period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Price {
    /// Integer minor units of `currency` (1999 = 19.99 EUR).
    pub minor_units: u64,
    pub period: PricePeriod,
    /// ISO 4217 code (`EUR`).
    pub currency: String,
}

/// What an allocation costs, and how it was counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    pub billable_seconds: u64,
    /// Started days beyond the free period.
    pub billable_days: u64,
    /// Integer minor units of the price's currency.
    pub amount_minor_units: u64,
}

/// The charge for an allocation that lasted `elapsed_seconds` (from its
/// start to its end, or to now) with `free_seconds` free, at `price`.
pub fn charge(elapsed_seconds: u64, free_seconds: u64, price: &Price) -> Charge {
    let billable_seconds = elapsed_seconds.saturating_sub(free_seconds);
    let billable_days = billable_seconds.div_ceil(DAY_SECONDS);
    let days = u128::from(billable_days);
    let unit = u128::from(price.minor_units);
    let amount = match price.period {
        PricePeriod::Day => unit * days,
        PricePeriod::Month => divide_half_up(unit * 12 * days, 365),
    };
    Charge {
        billable_seconds,
        billable_days,
        amount_minor_units: u64::try_from(amount).unwrap_or(u64::MAX),
    }
}

/// `numerator / denominator`, rounded half up (exact halves go up).
fn divide_half_up(numerator: u128, denominator: u128) -> u128 {
    (2 * numerator + denominator) / (2 * denominator)
}

/// An amount in words with its currency, assuming two decimals (`30.00
/// EUR`): for the panel's line item text only, never for arithmetic.
pub fn amount_in_words(minor_units: u64, currency: &str) -> String {
    format!("{}.{:02} {currency}", minor_units / 100, minor_units % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600;
    const FREE: u64 = 7 * DAY_SECONDS;

    fn monthly(minor_units: u64) -> Price {
        Price {
            minor_units,
            period: PricePeriod::Month,
            currency: "EUR".to_owned(),
        }
    }

    fn daily(minor_units: u64) -> Price {
        Price {
            minor_units,
            period: PricePeriod::Day,
            currency: "EUR".to_owned(),
        }
    }

    #[test]
    fn nine_days_five_hours_at_a_monthly_price() {
        // 9 d 5 h - 7 d free = 2 d 5 h: three started days.
        // 2999 * 12 * 3 / 365 = 107964 / 365 = 295.79... -> 296.
        let elapsed = 9 * DAY_SECONDS + 5 * HOUR;
        let charge = charge(elapsed, FREE, &monthly(2_999));
        assert_eq!(
            charge,
            Charge {
                billable_seconds: 2 * DAY_SECONDS + 5 * HOUR,
                billable_days: 3,
                amount_minor_units: 296,
            }
        );
        println!("9 d 5 h at 29.99 EUR a month, 7 days free: {charge:?}");
    }

    #[test]
    fn nine_days_five_hours_at_a_daily_price() {
        let elapsed = 9 * DAY_SECONDS + 5 * HOUR;
        let charge = charge(elapsed, FREE, &daily(150));
        assert_eq!(charge.billable_days, 3);
        assert_eq!(charge.amount_minor_units, 450);
        println!("9 d 5 h at 1.50 EUR a day, 7 days free: {charge:?}");
    }

    #[test]
    fn the_first_seven_days_cost_nothing() {
        for elapsed in [0, 1, DAY_SECONDS, 6 * DAY_SECONDS + 23 * HOUR, FREE] {
            for price in [monthly(2_999), daily(150)] {
                let charge = charge(elapsed, FREE, &price);
                assert_eq!(charge.amount_minor_units, 0, "{elapsed} s at {price:?}");
                assert_eq!(charge.billable_days, 0);
            }
        }
        // One second beyond the free week starts a day.
        assert_eq!(charge(FREE + 1, FREE, &daily(150)).amount_minor_units, 150);
    }

    #[test]
    fn released_on_day_three_costs_nothing() {
        let elapsed = 2 * DAY_SECONDS + 10 * HOUR;
        assert_eq!(charge(elapsed, FREE, &monthly(2_999)).amount_minor_units, 0);
        assert_eq!(charge(elapsed, FREE, &daily(150)).amount_minor_units, 0);
    }

    #[test]
    fn a_monthly_price_rounds_half_up_once_at_the_end() {
        // 365 days of a monthly price are exactly twelve months.
        assert_eq!(
            charge(FREE + 365 * DAY_SECONDS, FREE, &monthly(2_999)).amount_minor_units,
            12 * 2_999
        );
        // One day of 10.00 a month: 12000 / 365 = 32.876... -> 33.
        assert_eq!(
            charge(FREE + 1, FREE, &monthly(1_000)).amount_minor_units,
            33
        );
        // 0.10 a month for a day: 120 / 365 = 0.33 -> 0.
        assert_eq!(charge(FREE + 1, FREE, &monthly(10)).amount_minor_units, 0);
        assert_eq!(divide_half_up(5, 2), 3);
        assert_eq!(divide_half_up(7, 4), 2);
    }

    #[test]
    fn no_accepted_price_overflows() {
        let charge = charge(u64::MAX, 0, &monthly(1_000_000_000_000));
        assert_eq!(charge.amount_minor_units, u64::MAX);
    }

    #[test]
    fn amounts_in_words() {
        assert_eq!(amount_in_words(2_999, "EUR"), "29.99 EUR");
        assert_eq!(amount_in_words(5, "EUR"), "0.05 EUR");
    }
}
