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
    let key = user.as_bytes().as_slice();
    let mut row_groups = Vec::new();
    let mut selectors = Vec::new();
    let mut rows_selected = 0usize;
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
        let page_index = meta.page_index_for_row_group(rg_idx);
        let pages = match (
            page_index.column_index(col::USER_ID),
            page_index.offset_index(col::USER_ID),
        ) {
            (Some(ColumnIndexMetaData::FIXED_LEN_BYTE_ARRAY(ci)), Some(oi)) => Some((ci, oi)),
            _ => None,
        };
        let Some((ci, oi)) = pages else {
            selectors.push(RowSelector::select(rows));
            rows_selected += rows;
            continue;
        };
        let locations = oi.page_locations();
        for (p, loc) in locations.iter().enumerate() {
            let start = usize::try_from(loc.first_row_index).unwrap_or(0);
            let end = locations.get(p + 1).map_or(rows, |next| {
                usize::try_from(next.first_row_index).unwrap_or(rows)
            });
            let n = end.saturating_sub(start);
            if covers(ci.min_value(p), ci.max_value(p), key) {
                selectors.push(RowSelector::select(n));
                rows_selected += n;
            } else {
                selectors.push(RowSelector::skip(n));
            }
        }
    }
    if rows_selected == 0 {
        return None;
    }
    Some(ReadPlan {
        row_groups,
        selection: RowSelection::from(selectors),
        rows_selected,
    })
}
