//! The catalog's view of the requested databases' base tables: their
//! columns in order (what `@N` of the binary log's rows means) and the key
//! each table's touched rows are named by.

use std::collections::BTreeMap;

use super::{Catalog, Column, Table, TableName, VerifyError, unhex};
use crate::config::MariadbServer;
use crate::transfer::mariadb::client::{self, literal};

/// Reads the base tables of `databases`, their columns and keys.
pub async fn read_catalog(
    server: &MariadbServer,
    databases: &[String],
) -> Result<Catalog, VerifyError> {
    if databases.is_empty() {
        return Ok(Catalog::default());
    }
    let list: Vec<String> = databases.iter().map(|d| literal(d)).collect();
    let list = list.join(", ");
    let sql = format!(
        "SELECT 'c', HEX(c.TABLE_SCHEMA), HEX(c.TABLE_NAME), HEX(c.COLUMN_NAME), c.DATA_TYPE, \
         c.COLUMN_TYPE LIKE '%unsigned%', IFNULL(c.CHARACTER_SET_NAME, ''), \
         IFNULL(c.CHARACTER_OCTET_LENGTH, 0), c.IS_NULLABLE \
         FROM information_schema.COLUMNS c JOIN information_schema.TABLES t \
         ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
         WHERE t.TABLE_TYPE = 'BASE TABLE' AND c.TABLE_SCHEMA IN ({list}) \
         ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION;\n\
         SELECT 'k', HEX(TABLE_SCHEMA), HEX(TABLE_NAME), HEX(INDEX_NAME), HEX(COLUMN_NAME) \
         FROM information_schema.STATISTICS WHERE NON_UNIQUE = 0 AND TABLE_SCHEMA IN ({list}) \
         ORDER BY TABLE_SCHEMA, TABLE_NAME, INDEX_NAME <> 'PRIMARY', INDEX_NAME, SEQ_IN_INDEX;\n"
    );
    let rows = client::query(server, &sql, Some(client::SHORT)).await?;
    let unexpected = |row: &[String]| VerifyError::Unexpected {
        server: server.name.clone(),
        what: "the catalog query",
        line: row.join("\t"),
    };
    let text = |field: &str| unhex(field).and_then(|bytes| String::from_utf8(bytes).ok());
    let mut columns: BTreeMap<TableName, Vec<(Column, bool)>> = BTreeMap::new();
    // Unique indexes per table, in the query's order (PRIMARY first).
    let mut indexes: BTreeMap<TableName, Vec<(String, Vec<String>)>> = BTreeMap::new();
    for row in &rows {
        let table = match (row.get(1), row.get(2)) {
            (Some(database), Some(name)) => text(database)
                .zip(text(name))
                .map(|(database, name)| TableName { database, name }),
            _ => None,
        }
        .ok_or_else(|| unexpected(row))?;
        match (row.first().map(String::as_str), row.len()) {
            (Some("c"), 9) => {
                let name = text(&row[3]).ok_or_else(|| unexpected(row))?;
                let data_type = row[4].to_ascii_lowercase();
                let charset = (!row[6].is_empty() && row[6] != "binary").then(|| row[6].clone());
                if charset
                    .as_deref()
                    .is_some_and(|cs| !cs.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                {
                    return Err(unexpected(row));
                }
                let fixed_binary_length = (data_type == "binary")
                    .then(|| row[7].parse().ok())
                    .flatten();
                let column = Column {
                    name,
                    data_type,
                    unsigned: row[5] == "1",
                    charset,
                    fixed_binary_length,
                };
                columns
                    .entry(table)
                    .or_default()
                    .push((column, row[8] == "YES"));
            }
            (Some("k"), 5) => {
                let index = text(&row[3]).ok_or_else(|| unexpected(row))?;
                let column = text(&row[4]).ok_or_else(|| unexpected(row))?;
                let table_indexes = indexes.entry(table).or_default();
                match table_indexes.last_mut() {
                    Some((name, columns)) if *name == index => columns.push(column),
                    _ => table_indexes.push((index, vec![column])),
                }
            }
            _ => return Err(unexpected(row)),
        }
    }
    let mut catalog = Catalog::default();
    for (table, columns) in columns {
        let key = choose_key(&columns, indexes.get(&table).map(Vec::as_slice));
        let columns = columns.into_iter().map(|(column, _)| column).collect();
        catalog.tables.insert(table, Table { columns, key });
    }
    Ok(catalog)
}

/// The primary key, else the first unique key of NOT NULL columns; its
/// columns' kinds must be readable.
fn choose_key(
    columns: &[(Column, bool)],
    indexes: Option<&[(String, Vec<String>)]>,
) -> Result<Vec<usize>, String> {
    let position = |name: &str| columns.iter().position(|(column, _)| column.name == name);
    let usable = indexes.unwrap_or_default().iter().find_map(|(_, names)| {
        let positions: Option<Vec<usize>> = names.iter().map(|name| position(name)).collect();
        positions.filter(|positions| positions.iter().all(|&i| !columns[i].1))
    });
    let Some(key) = usable else {
        return Err("no primary key and no unique key of NOT NULL columns".to_owned());
    };
    for &index in &key {
        let column = &columns[index].0;
        if column.kind().is_none() {
            return Err(format!(
                "key column {} is of type {}, which the binary log's text is not read for",
                column.name, column.data_type
            ));
        }
    }
    Ok(key)
}
