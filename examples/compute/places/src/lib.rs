//! `places`: from a location track (OwnTracks-style readings with `lat`, `lon` and
//! `tst`), the places where the person stayed longest, rounded to a grid. The result
//! reveals far less than the track: a handful of grid cells and durations.
//!
//! Parameters, all optional (these are the defaults; no `start` or `end` means
//! everything the capability grants):
//! `{"store": "location", "grid_m": 250, "top": 10, "max_gap_s": 3600, "start": ms,
//! "end": ms}`.
//!
//! Result: `{"grid_m": 250, "readings": n, "skipped": k, "places": [{"lat": 52.5209,
//! "lon": 13.4033, "seconds": s, "visits": v}, …]}`: `readings` counts the readings
//! scanned, `skipped` those without a numeric `lat` and `lon` in range, and `places`
//! the `top` cells by time spent (ties by latitude, then longitude), each with its
//! centre rounded to 4 decimals.
//!
//! # The grid
//!
//! Rows are bands of latitude `grid_m / 111 320` degrees high (a degree of latitude is
//! about 111.32 km): row `r` holds latitudes in `[r·h, (r+1)·h)`. Each row is cut into
//! cells `grid_m / (111 320 · cos φ)` degrees of longitude wide, where `φ` is the
//! latitude of the row's centre line, so cells are about `grid_m` square wherever
//! they are (at most 360° wide near the poles). A cell is a pure function of the
//! coordinates and `grid_m`: the same track gives the same cells on every run.
//!
//! # Time spent
//!
//! Readings are taken in time order (`tst` seconds when present, else the reading's
//! timestamp). The time between two consecutive readings counts for a cell when both
//! lie in it and they are at most `max_gap_s` apart; a longer gap means the track lost
//! the person, and the time is not counted. A visit is a maximal run of two or more
//! consecutive readings in one cell joined that way.

use std::collections::BTreeMap;

use hearth_sdk::{Reading, Value, Window, stores};
use serde::{Deserialize, Serialize};

/// Metres in a degree of latitude (and of longitude at the equator).
const METRES_PER_DEGREE: f64 = 111_320.0;
/// Most readings one run holds in memory (16 bytes each).
const MAX_READINGS: usize = 1_000_000;

/// What the caller asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The timeseries store of locations.
    #[serde(default = "default_store")]
    store: String,
    /// Side of a grid cell, in metres (10 to 100 000).
    #[serde(default = "default_grid_m")]
    grid_m: u32,
    /// How many places to return (1 to 100).
    #[serde(default = "default_top")]
    top: usize,
    /// Longest gap between two readings that still counts as staying, in seconds.
    #[serde(default = "default_max_gap_s")]
    max_gap_s: u64,
    /// First instant included, in milliseconds since the Unix epoch.
    start: Option<u64>,
    /// First instant excluded.
    end: Option<u64>,
}

fn default_store() -> String {
    "location".to_owned()
}

fn default_grid_m() -> u32 {
    250
}

fn default_top() -> usize {
    10
}

fn default_max_gap_s() -> u64 {
    3600
}

/// The result.
#[derive(Debug, Serialize)]
struct Summary {
    grid_m: u32,
    readings: u64,
    skipped: u64,
    places: Vec<Place>,
}

/// One grid cell where the person stayed.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Place {
    /// Latitude of the cell's centre, rounded to 4 decimals.
    lat: f64,
    /// Longitude of the cell's centre, rounded to 4 decimals.
    lon: f64,
    /// Time spent in the cell, in whole seconds.
    seconds: u64,
    /// Visits to the cell.
    visits: u64,
}

/// A grid cell: row of latitude, column of longitude within the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cell {
    row: i32,
    col: i32,
}

/// A reading reduced to what the walk needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Point {
    /// Milliseconds since the Unix epoch.
    t: u64,
    cell: Cell,
}

/// The grid for one cell size.
#[derive(Debug, Clone, Copy)]
struct Grid {
    metres: f64,
    /// Height of a row, in degrees of latitude.
    lat_step: f64,
}

impl Grid {
    fn new(grid_m: u32) -> Self {
        let metres = f64::from(grid_m);
        Grid {
            metres,
            lat_step: metres / METRES_PER_DEGREE,
        }
    }

    /// Latitude of the centre line of `row`, kept inside [-90, 90].
    fn row_centre(&self, row: i32) -> f64 {
        ((f64::from(row) + 0.5) * self.lat_step).clamp(-90.0, 90.0)
    }

    /// Width of the cells of `row`, in degrees of longitude.
    fn lon_step(&self, row: i32) -> f64 {
        let cos = self.row_centre(row).to_radians().cos();
        (self.metres / (METRES_PER_DEGREE * cos)).min(360.0)
    }

    /// The cell holding a valid coordinate.
    fn cell(&self, lat: f64, lon: f64) -> Cell {
        let row = floor_to_i32(lat / self.lat_step);
        let col = floor_to_i32(lon / self.lon_step(row));
        Cell { row, col }
    }

    /// The centre of `cell`: `(lat, lon)`.
    fn centre(&self, cell: Cell) -> (f64, f64) {
        let lon = ((f64::from(cell.col) + 0.5) * self.lon_step(cell.row)).clamp(-180.0, 180.0);
        (self.row_centre(cell.row), lon)
    }
}

/// `⌊x⌋` for the small, finite numbers of grid arithmetic (rows and columns are far
/// inside i32: at 10 m there are 1 001 880 rows).
#[allow(
    clippy::cast_possible_truncation,
    reason = "a floor, far inside i32; `as` saturates and maps NaN to 0"
)]
fn floor_to_i32(x: f64) -> i32 {
    x.floor() as i32
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// When `value` was recorded, in milliseconds, and where, if it has a valid location:
/// `tst` (seconds) when present, else the reading's timestamp.
fn locate(reading: &Reading) -> Option<(u64, f64, f64)> {
    let number = |name: &str| reading.value.get(name).and_then(Value::as_f64);
    let lat = number("lat").filter(|l| (-90.0..=90.0).contains(l))?;
    let lon = number("lon").filter(|l| (-180.0..=180.0).contains(l))?;
    let t = reading
        .value
        .get("tst")
        .and_then(Value::as_u64)
        .map_or(reading.ts, |s| s.saturating_mul(1000));
    Some((t, lat, lon))
}

/// Time spent (milliseconds) and visits per cell, from points in time order.
fn stays(points: &[Point], max_gap_ms: u64) -> BTreeMap<Cell, (u64, u64)> {
    let mut stays: BTreeMap<Cell, (u64, u64)> = BTreeMap::new();
    let mut in_visit = false;
    for (a, b) in points.iter().zip(points.iter().skip(1)) {
        let gap = b.t.saturating_sub(a.t);
        if a.cell == b.cell && gap <= max_gap_ms {
            let stay = stays.entry(a.cell).or_default();
            stay.0 += gap;
            if !in_visit {
                stay.1 += 1;
                in_visit = true;
            }
        } else {
            in_visit = false;
        }
    }
    stays
}

/// The `top` places by time spent, ties by latitude, then longitude.
fn rank(grid: &Grid, stays: &BTreeMap<Cell, (u64, u64)>, top: usize) -> Vec<Place> {
    let mut places: Vec<Place> = stays
        .iter()
        .map(|(&cell, &(ms, visits))| {
            let (lat, lon) = grid.centre(cell);
            Place {
                lat: round4(lat),
                lon: round4(lon),
                seconds: ms / 1000,
                visits,
            }
        })
        .collect();
    places.sort_by(|a, b| {
        b.seconds
            .cmp(&a.seconds)
            .then(a.lat.total_cmp(&b.lat))
            .then(a.lon.total_cmp(&b.lon))
    });
    places.truncate(top);
    places
}

fn places(params: Params) -> Result<Summary, String> {
    if !(10..=100_000).contains(&params.grid_m) {
        return Err(format!(
            "`grid_m` must be 10 to 100000 metres, not {}.",
            params.grid_m
        ));
    }
    if !(1..=100).contains(&params.top) {
        return Err(format!("`top` must be 1 to 100, not {}.", params.top));
    }
    let window = Window::new(params.start, params.end);
    let grid = Grid::new(params.grid_m);
    let mut points = Vec::new();
    let (mut readings, mut skipped) = (0, 0);
    for reading in stores::read(&params.store, Some(&["lat", "lon", "tst"]), window)? {
        let reading = reading?;
        readings += 1;
        match locate(&reading) {
            Some((t, lat, lon)) => {
                if points.len() == MAX_READINGS {
                    return Err(format!(
                        "The store has more than {MAX_READINGS} readings with a location; pass \
                         \"start\" and \"end\" (milliseconds since 1970) to choose fewer."
                    ));
                }
                points.push(Point {
                    t,
                    cell: grid.cell(lat, lon),
                });
            }
            None => skipped += 1,
        }
    }
    // Readings come in the order the node stored them; `tst` may differ from it.
    points.sort_by_key(|p| p.t);
    let stays = stays(&points, params.max_gap_s.saturating_mul(1000));
    Ok(Summary {
        grid_m: params.grid_m,
        readings,
        skipped,
        places: rank(&grid, &stays, params.top),
    })
}

hearth_sdk::computation!(places);

#[cfg(test)]
mod tests {
    use hearth_sdk::json;

    use super::*;

    fn reading(ts: u64, value: Value) -> Reading {
        Reading { ts, value }
    }

    #[test]
    fn locations_need_numbers_in_range() {
        let r = reading(
            5,
            json!({"lat": 52.52, "lon": 13.405, "tst": 1_700_000_000}),
        );
        assert_eq!(locate(&r), Some((1_700_000_000_000, 52.52, 13.405)));
        let r = reading(5, json!({"lat": 52.52, "lon": 13.405}));
        assert_eq!(locate(&r), Some((5, 52.52, 13.405)));
        assert_eq!(
            locate(&reading(5, json!({"lat": "52.5", "lon": 13.4}))),
            None
        );
        assert_eq!(locate(&reading(5, json!({"lat": 91.0, "lon": 13.4}))), None);
        assert_eq!(locate(&reading(5, json!({"lon": 13.4}))), None);
        assert_eq!(locate(&reading(5, json!(7))), None);
    }

    #[test]
    fn cells_are_about_the_grid_size() {
        let grid = Grid::new(250);
        let here = grid.cell(52.52, 13.405);
        let (lat, lon) = grid.centre(here);
        // The centre lies in its own cell, within half a cell of the point.
        assert_eq!(grid.cell(lat, lon), here);
        assert!((lat - 52.52).abs() <= 250.0 / METRES_PER_DEGREE / 2.0);
        let half_width = grid.lon_step(here.row) / 2.0;
        assert!((lon - 13.405).abs() <= half_width);
        // A cell is about 250 m wide at this latitude: wider in degrees than tall.
        let width_m = 2.0 * half_width * METRES_PER_DEGREE * lat.to_radians().cos();
        assert!((width_m - 250.0).abs() < 1e-6, "{width_m}");
        // 300 m north is another row.
        assert_ne!(
            grid.cell(52.52 + 300.0 / METRES_PER_DEGREE, 13.405).row,
            here.row
        );
        // Negative coordinates and the poles are cells too.
        assert!(grid.cell(-33.86, -151.21).row < 0 && grid.cell(-33.86, -151.21).col < 0);
        let (pole_lat, pole_lon) = grid.centre(grid.cell(90.0, 180.0));
        assert!(pole_lat <= 90.0 && (-180.0..=180.0).contains(&pole_lon));
    }

    fn point(t_s: u64, row: i32) -> Point {
        Point {
            t: t_s * 1000,
            cell: Cell { row, col: 0 },
        }
    }

    #[test]
    fn time_counts_within_a_cell_and_a_gap() {
        let points = [
            point(0, 1),
            point(600, 1),
            point(1200, 1), // 20 minutes in cell 1
            point(1300, 2), // moving: not counted
            point(1400, 1),
            point(9000, 1), // a gap of over an hour: not counted
            point(9060, 1), // one more minute, a new visit
            point(9120, 3), // a single reading is no visit
        ];
        let stays = stays(&points, 3_600_000);
        assert_eq!(stays.get(&Cell { row: 1, col: 0 }), Some(&(1_260_000, 2)));
        assert_eq!(stays.get(&Cell { row: 2, col: 0 }), None);
        assert_eq!(stays.get(&Cell { row: 3, col: 0 }), None);
        assert_eq!(stays.len(), 1);
    }

    #[test]
    fn places_rank_by_time_then_position() {
        let grid = Grid::new(250);
        let stays = BTreeMap::from([
            (Cell { row: 3, col: 0 }, (60_000, 1)),
            (Cell { row: 2, col: 0 }, (60_999, 1)),
            (Cell { row: 1, col: 0 }, (7_200_000, 3)),
            (Cell { row: 0, col: 0 }, (1_000, 1)),
        ]);
        let ranked = rank(&grid, &stays, 3);
        let rows: Vec<(u64, u64)> = ranked.iter().map(|p| (p.seconds, p.visits)).collect();
        assert_eq!(rows, vec![(7200, 3), (60, 1), (60, 1)]);
        // Equal seconds: the lower latitude first.
        assert!(ranked[1].lat < ranked[2].lat);
        assert_eq!(
            ranked[0].lat,
            round4(grid.centre(Cell { row: 1, col: 0 }).0)
        );
    }

    #[test]
    fn the_result_is_rounded_json() {
        let grid = Grid::new(250);
        let stays = BTreeMap::from([(grid.cell(52.52, 13.405), (3_600_000, 1))]);
        let json = hearth_sdk::serde_json::to_value(rank(&grid, &stays, 10)).unwrap();
        assert_eq!(
            json,
            json!([{"lat": 52.5209, "lon": 13.4033, "seconds": 3600, "visits": 1}])
        );
    }

    #[test]
    fn parameters_are_checked() {
        let err = hearth_sdk::handle(r#"{"grid_m": 5}"#, places).unwrap_err();
        assert_eq!(err, "`grid_m` must be 10 to 100000 metres, not 5.");
        let err = hearth_sdk::handle(r#"{"top": 0}"#, places).unwrap_err();
        assert_eq!(err, "`top` must be 1 to 100, not 0.");
        let err = hearth_sdk::handle(r#"{"grid": 5}"#, places).unwrap_err();
        assert!(err.contains("unknown field `grid`"), "{err}");
    }
}
