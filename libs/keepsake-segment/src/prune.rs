//! Planning a read of one user's events from a segment, using the sort order.
//!
//! Rows are sorted by `(user_id, seq)`, so a user's rows are one contiguous run. Row-group
//! statistics rule out whole row groups; inside the rest, the column index of `user_id` gives each
//! page's min/max and the offset index its first row, so only pages that may hold the user are
//! selected. Selection is conservative: it may include rows of other users (the caller filters),
//! never exclude the user's own.

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::error::ArrowError;
use keepsake_model::UserId;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowPredicateFn, RowFilter, RowSelection, RowSelector};
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

/// A filter that keeps only `user`'s rows, evaluated on the `user_id` column (the first of
/// segments, history objects and checkpoint parts) before any other column is decoded. A plan's
/// selection is as wide as the pages of `user_id` that may hold the user (up to 2,048 rows: ~17
/// users of a checkpoint part); with this filter a reader fetches and decompresses only the
/// pages of documents that hold the user's own rows.
pub fn user_row_filter(meta: &ParquetMetaData, user: &UserId) -> RowFilter {
    let mask = ProjectionMask::leaves(meta.file_metadata().schema_descr(), [col::USER_ID]);
    let want = *user.0.as_bytes();
    let predicate = ArrowPredicateFn::new(mask, move |batch: RecordBatch| {
        let ids = batch
            .columns()
            .first()
            .and_then(|c| c.as_fixed_size_binary_opt())
            .filter(|ids| ids.value_length() == 16)
            .ok_or_else(|| {
                ArrowError::SchemaError("user_id is not a column of 16-byte ids".into())
            })?;
        Ok((0..ids.len())
            .map(|i| Some(ids.is_valid(i) && ids.value(i) == want.as_slice()))
            .collect::<BooleanArray>())
    });
    RowFilter::new(vec![Box::new(predicate)])
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

/// Splits a selection into at most `parts` selections over the same rows, each selecting a
/// contiguous share of the selected rows (in order, about equal): reading the parts on
/// separate threads and concatenating the results reads exactly what `selection` reads.
pub fn split_selection(selection: &RowSelection, parts: usize) -> Vec<RowSelection> {
    let total_selected = selection.row_count();
    let parts = parts.clamp(1, total_selected.max(1));
    let share = total_selected.div_ceil(parts);
    let total_rows: usize = selection.iter().map(|s| s.row_count).sum();
    let mut out: Vec<Vec<RowSelector>> = vec![Vec::new(); parts];
    // Each part's cursor: the rows it has accounted for so far.
    let mut cursors = vec![0usize; parts];
    let (mut at, mut taken) = (0usize, 0usize);
    for s in selection.iter() {
        if s.skip {
            at += s.row_count;
            continue;
        }
        let mut left = s.row_count;
        while left > 0 {
            let part = (taken / share.max(1)).min(parts - 1);
            let room = share * (part + 1) - taken;
            let n = if part == parts - 1 {
                left
            } else {
                left.min(room)
            };
            if at > cursors[part] {
                out[part].push(RowSelector::skip(at - cursors[part]));
            }
            out[part].push(RowSelector::select(n));
            cursors[part] = at + n;
            at += n;
            taken += n;
            left -= n;
        }
    }
    out.into_iter()
        .zip(cursors)
        .filter(|(sel, _)| sel.iter().any(|s| !s.skip))
        .map(|(mut sel, cursor)| {
            if total_rows > cursor {
                sel.push(RowSelector::skip(total_rows - cursor));
            }
            RowSelection::from(sel)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The selected rows, by position.
    fn rows(sel: &RowSelection) -> Vec<usize> {
        let (mut at, mut out) = (0, Vec::new());
        for s in sel.iter() {
            if !s.skip {
                out.extend(at..at + s.row_count);
            }
            at += s.row_count;
        }
        out
    }

    #[test]
    fn split_parts_read_exactly_the_selection_in_order() {
        let selections = [
            vec![RowSelector::select(10)],
            vec![
                RowSelector::skip(5),
                RowSelector::select(7),
                RowSelector::skip(3),
            ],
            vec![
                RowSelector::skip(2048),
                RowSelector::select(4096),
                RowSelector::skip(100),
                RowSelector::select(1),
                RowSelector::skip(9),
                RowSelector::select(3000),
            ],
            vec![RowSelector::select(1)],
        ];
        for s in selections {
            let sel = RowSelection::from(s);
            let total_rows: usize = sel.iter().map(|s| s.row_count).sum();
            for parts in 1..6 {
                let split = split_selection(&sel, parts);
                assert!(!split.is_empty() && split.len() <= parts);
                let joined: Vec<usize> = split.iter().flat_map(rows).collect();
                assert_eq!(joined, rows(&sel), "{parts} parts of {sel:?}");
                for p in &split {
                    let covered: usize = p.iter().map(|s| s.row_count).sum();
                    assert_eq!(covered, total_rows, "each part spans the same rows");
                }
                let shares: Vec<usize> = split.iter().map(RowSelection::row_count).collect();
                let (min, max) = (shares.iter().min(), shares.iter().max());
                assert!(
                    max.zip(min)
                        .is_some_and(|(a, b)| a - b <= sel.row_count().div_ceil(parts))
                );
            }
        }
    }
}
