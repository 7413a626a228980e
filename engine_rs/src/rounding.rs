//! Rounding of `amount * bp / 10_000` products to whole fen, by the policy's named mode.

use serde::{Deserialize, Serialize};

/// Basis points in one whole (100 %).
pub const BP: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoundMode {
    /// 四舍五入: halves go up.
    #[default]
    HalfUp,
    /// Banker's rounding: halves go to the even fen.
    HalfEven,
    /// Truncate toward zero (the fund never pays a fraction it did not owe).
    Down,
    /// Any fraction goes up.
    Up,
}

/// Whether a quotient `q` with remainder `r > 0` of a division by `den` rounds up.
#[inline(always)]
fn rounds_up(q_odd: bool, r: i128, den: i128, mode: RoundMode) -> bool {
    match mode {
        RoundMode::Down => false,
        RoundMode::Up => true,
        RoundMode::HalfUp => r >= den - r,
        RoundMode::HalfEven => r > den - r || (r == den - r && q_odd),
    }
}

/// `num / den` for `num >= 0`, `den > 0`, rounded by `mode`.
#[inline]
pub fn round_div(num: i128, den: i128, mode: RoundMode) -> i128 {
    debug_assert!(num >= 0 && den > 0);
    // 128-bit division is a library call; nearly every product fits in 64 bits.
    if let (Ok(n), Ok(d)) = (i64::try_from(num), i64::try_from(den)) {
        return i128::from(round_div64(n, d, mode));
    }
    let (q, r) = (num / den, num % den);
    q + i128::from(r != 0 && rounds_up(q % 2 == 1, r, den, mode))
}

/// `num / 10_000` rounded: the divisor of every ratio and quantity product. A constant
/// divisor compiles to a multiply, where a runtime one costs a hardware division per line.
#[inline]
pub fn round_bp(num: i128, mode: RoundMode) -> i128 {
    match i64::try_from(num) {
        Ok(n) => i128::from(round_div64(n, BP, mode)),
        Err(_) => round_div(num, i128::from(BP), mode),
    }
}

/// `round_div` in 64 bits.
#[inline(always)]
fn round_div64(num: i64, den: i64, mode: RoundMode) -> i64 {
    let (q, r) = (num / den, num % den);
    q + i64::from(r != 0 && rounds_up(q % 2 == 1, r.into(), den.into(), mode))
}

/// `amount * bp / 10_000` rounded; `amount >= 0`, `0 <= bp <= 10_000`, so the result fits.
#[inline]
pub fn apply_bp(amount: i64, bp: i64, mode: RoundMode) -> i64 {
    round_bp(i128::from(amount) * i128::from(bp), mode) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(round_div(25, 10, RoundMode::HalfUp), 3);
        assert_eq!(round_div(25, 10, RoundMode::HalfEven), 2);
        assert_eq!(round_div(35, 10, RoundMode::HalfEven), 4);
        assert_eq!(round_div(24, 10, RoundMode::Up), 3);
        assert_eq!(round_div(29, 10, RoundMode::Down), 2);
        assert_eq!(round_div(30, 10, RoundMode::Up), 3);
        assert_eq!(apply_bp(1, 5000, RoundMode::HalfUp), 1);
        assert_eq!(apply_bp(i64::MAX, 10_000, RoundMode::HalfUp), i64::MAX);
        // the 64-bit path and the 128-bit path agree around every rounding edge
        for mode in [
            RoundMode::HalfUp,
            RoundMode::HalfEven,
            RoundMode::Down,
            RoundMode::Up,
        ] {
            for num in [0i64, 1, 4999, 5000, 5001, 14_999, 15_000, 15_001, i64::MAX] {
                let wide = (i128::from(num) << 64) / (1i128 << 64); // same value, forced wide
                let expect = {
                    let (q, r) = (wide / 10_000, wide % 10_000);
                    match mode {
                        RoundMode::Down => q,
                        RoundMode::Up => q + i128::from(r > 0),
                        RoundMode::HalfUp => q + i128::from(2 * r >= 10_000),
                        RoundMode::HalfEven => {
                            q + i128::from(2 * r > 10_000 || (2 * r == 10_000 && q % 2 == 1))
                        }
                    }
                };
                assert_eq!(round_div(wide, 10_000, mode), expect, "{num} {mode:?}");
                assert_eq!(round_bp(wide, mode), expect, "{num} {mode:?}");
            }
        }
    }
}
