//! Planning a read of one user's events from a segment, using the sort order.
//!
//! Rows are sorted by `(user_id, seq)`, so a user's rows are one contiguous run. Row-group
//! statistics rule out whole row groups; inside the rest, the column index of `user_id` gives each
//! page's min/max and the offset index its first row, so only pages that may hold the user are
//! selected. Selection is conservative: it may include rows of other users (the caller filters),
//! never exclude the user's own.

use keepsake_model::UserId;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::page_index::column_index::ColumnIndexMetaData;

use crate::schema::col;

/// Which row groups to read, and which rows inside them.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadPlan {
    /// Row groups that may hold the user's rows, ascending.
    pub row_groups: Vec<usize>,
    /// Rows to read within those row groups (concatenated, in row-group order).
    pub selection: RowSelection,
    /// Rows selected, out of the file's total.
    pub rows_selected: usize,
}

fn covers(min: Option<&[u8]>, max: Option<&[u8]>, key: &[u8]) -> bool {
    // Missing statistics cannot rule anything out.
    min.is_none_or(|m| m <= key) && max.is_none_or(|m| key <= m)
}

/// Plans the read of `user`'s rows; `None` when the statistics show the file has none.
pub fn plan_user_read(meta: &ParquetMetaData, user: &UserId) -> Option<ReadPlan> {
    plan(meta, user, None)
}

/// [`plan_user_read`] that also leaves out the pages of column `column` whose values are all
/// `skip` (by the page index). For files sorted so that such rows are contiguous, like a
/// checkpoint's `change` rows, which a reader of items does not need.
pub fn plan_user_read_skipping(
    meta: &ParquetMetaData,
    user: &UserId,
    column: usize,
    skip: &[u8],
) -> Option<ReadPlan> {
    plan(meta, user, Some((column, skip)))
}

/// Selectors for one row group's pages of `column`: a page is selected when `keep(min, max)`.
/// `None` when the row group has no page index for the column.
fn page_selectors(
    meta: &ParquetMetaData,
    rg_idx: usize,
    column: usize,
    rows: usize,
    keep: impl Fn(Option<&[u8]>, Option<&[u8]>) -> bool,
) -> Option<Vec<RowSelector>> {
    let page_index = meta.page_index_for_row_group(rg_idx);
    let (ci, oi) = match (
        page_index.column_index(column),
        page_index.offset_index(column),
    ) {
        (
            Some(
                ColumnIndexMetaData::FIXED_LEN_BYTE_ARRAY(ci) | ColumnIndexMetaData::BYTE_ARRAY(ci),
            ),
            Some(oi),
        ) => (ci, oi),
        _ => return None,
    };
    let locations = oi.page_locations();
    let mut selectors = Vec::with_capacity(locations.len());
    for (p, loc) in locations.iter().enumerate() {
        let start = usize::try_from(loc.first_row_index).unwrap_or(0);
        let end = locations.get(p + 1).map_or(rows, |next| {
            usize::try_from(next.first_row_index).unwrap_or(rows)
        });
        let n = end.saturating_sub(start);
        if keep(ci.min_value(p), ci.max_value(p)) {
            selectors.push(RowSelector::select(n));
        } else {
            selectors.push(RowSelector::skip(n));
        }
    }
    Some(selectors)
}

fn plan(meta: &ParquetMetaData, user: &UserId, skip: Option<(usize, &[u8])>) -> Option<ReadPlan> {
    let key = user.as_bytes().as_slice();
    let mut row_groups = Vec::new();
    let mut selectors = Vec::new();
    let mut skipping: Vec<RowSelector> = Vec::new();
    for (rg_idx, rg) in meta.row_groups().iter().enumerate() {
        let rows = usize::try_from(rg.num_rows()).unwrap_or(0);
        let stats = rg.column(col::USER_ID).statistics();
        if !covers(
            stats.and_then(|s| s.min_bytes_opt()),
            stats.and_then(|s| s.max_bytes_opt()),
            key,
        ) {
            continue;
        }
        row_groups.push(rg_idx);
        selectors.extend(
            page_selectors(meta, rg_idx, col::USER_ID, rows, |min, max| {
                covers(min, max, key)
            })
            .unwrap_or_else(|| vec![RowSelector::select(rows)]),
        );
        if let Some((column, value)) = skip {
            // A page whose min and max are both the skipped value holds nothing else.
            skipping.extend(
                page_selectors(meta, rg_idx, column, rows, |min, max| {
                    !(min == Some(value) && max == Some(value))
                })
                .unwrap_or_else(|| vec![RowSelector::select(rows)]),
            );
        }
    }
    let mut selection = RowSelection::from(selectors);
    if skip.is_some() {
        selection = selection.intersection(&RowSelection::from(skipping));
    }
    let rows_selected = selection.row_count();
    if rows_selected == 0 {
        return None;
    }
    Some(ReadPlan {
        row_groups,
        selection,
        rows_selected,
    })
}
