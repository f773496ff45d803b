//! What a source database holds, read from its catalogs (inside the copy's
//! snapshot when there is one): tables and how to copy them, sequences,
//! roles with their password verifiers, extensions, large objects and the
//! database's own properties.
//!
//! Reads only. The queries work on PostgreSQL 12 and later; columns that
//! differ between versions (locale providers) are read through `to_jsonb`
//! of the catalog row.

use navette_proto::v1::{
    PostgresDatabaseDescription, PostgresDatabaseProperties, PostgresExtension, PostgresGrant,
    PostgresIndex, PostgresMembership, PostgresRole, PostgresSequence, PostgresSetting,
    PostgresTable,
};
use tokio_postgres::Client;

use super::session::qualified;

/// A catalog query that failed, and what it was for.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct CatalogError {
    pub what: String,
    #[source]
    pub source: tokio_postgres::Error,
}

pub(super) fn step(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> CatalogError {
    let what = what.into();
    move |source| CatalogError { what, source }
}

/// User schemas: not the system's, not temporary, not TOAST.
pub const USER_SCHEMA: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'";

/// Tables whose rows are copied: plain tables (partitions included, their
/// partitioned parents hold no rows), not temporary, not members of an
/// extension (an extension creates its own tables on the target), biggest
/// first.
const TABLES: &str = "SELECT c.oid, n.nspname, c.relname, \
       pg_table_size(c.oid), \
       pg_relation_size(c.oid) / current_setting('block_size')::int8, \
       c.reltuples::int8 \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND {USER_SCHEMA} \
       AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                       AND d.objid = c.oid AND d.deptype = 'e') \
     ORDER BY 4 DESC, 2, 3";

/// The indexes a target can build as soon as their table is loaded (see
/// `PostgresIndex`): what pg_restore's post-data section would otherwise
/// build after every table.
const INDEXES: &str = "SELECT i.indrelid, c.oid, c.relname, pg_get_indexdef(c.oid), \
       coalesce(k.oid, 0::oid), coalesce(k.contype::text, ''), \
       coalesce(k.condeferrable, false), coalesce(k.condeferred, false) \
     FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
     LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid \
     WHERE i.indrelid = ANY($1) AND i.indisvalid AND i.indislive \
       AND c.reltablespace = 0 AND NOT c.relispartition \
       AND (k.oid IS NULL OR (k.contype IN ('p', 'u') AND k.conname = c.relname)) \
     ORDER BY 1, 3";

/// The columns COPY carries: not dropped, not generated (COPY TO leaves
/// generated columns out and COPY FROM refuses them), in order.
pub const COLUMNS: &str = "SELECT attrelid, attname FROM pg_attribute \
     WHERE attrelid = ANY($1) AND attnum > 0 AND NOT attisdropped AND attgenerated = '' \
     ORDER BY attrelid, attnum";

/// Per table, whether binary COPY is safe: every type reached from its
/// columns (through domains, arrays, records, ranges) has binary send and
/// receive functions, no array or record embeds the OID of a type that is
/// not built in (array_recv and record_recv compare it with the target's,
/// where user types have other OIDs), and no reg* type (sent as OIDs).
const BINARY_SAFE: &str = "WITH RECURSIVE walk(relid, type_oid, embedded) AS ( \
       SELECT a.attrelid, a.atttypid, false FROM pg_attribute a \
       WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped \
     UNION \
       SELECT w.relid, x.type_oid, x.embedded \
       FROM walk w JOIN pg_type t ON t.oid = w.type_oid \
       CROSS JOIN LATERAL ( \
           SELECT t.typbasetype, w.embedded WHERE t.typtype = 'd' \
         UNION ALL \
           SELECT t.typelem, true WHERE t.typelem <> 0 AND t.typlen = -1 \
         UNION ALL \
           SELECT a.atttypid, true FROM pg_attribute a \
           WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 \
             AND NOT a.attisdropped \
         UNION ALL \
           SELECT r.rngsubtype, w.embedded FROM pg_range r \
           WHERE t.typtype = 'r' AND r.rngtypid = t.oid \
         UNION ALL \
           SELECT r.rngtypid, w.embedded FROM pg_range r \
           WHERE t.typtype = 'm' AND (to_jsonb(r) ->> 'rngmultitypid')::oid = t.oid \
       ) AS x(type_oid, embedded) \
     ) \
     SELECT w.relid, bool_and(t.typsend <> 0 AND t.typreceive <> 0 \
         AND NOT (w.embedded AND w.type_oid >= 16384) \
         AND NOT (t.typnamespace = 'pg_catalog'::regnamespace AND t.typname LIKE 'reg%')) \
     FROM walk w JOIN pg_type t ON t.oid = w.type_oid \
     GROUP BY w.relid";

const SEQUENCES: &str = "SELECT n.nspname, c.relname \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'S' AND {USER_SCHEMA} \
       AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                       AND d.objid = c.oid AND d.deptype = 'e') \
     ORDER BY 1, 2";

/// Every role the database refers to, then the groups they belong to;
/// superusers and predefined roles are the target's own business.
const ROLES: &str = "WITH RECURSIVE db AS ( \
       SELECT oid, datdba, datacl FROM pg_database WHERE datname = current_database()), \
     refs(role) AS ( \
             SELECT datdba FROM db \
       UNION SELECT (aclexplode(datacl)).grantee FROM db \
       UNION SELECT relowner FROM pg_class \
       UNION SELECT (aclexplode(relacl)).grantee FROM pg_class \
       UNION SELECT (aclexplode(attacl)).grantee FROM pg_attribute WHERE attacl IS NOT NULL \
       UNION SELECT nspowner FROM pg_namespace \
       UNION SELECT (aclexplode(nspacl)).grantee FROM pg_namespace \
       UNION SELECT proowner FROM pg_proc \
       UNION SELECT (aclexplode(proacl)).grantee FROM pg_proc \
       UNION SELECT typowner FROM pg_type \
       UNION SELECT (aclexplode(typacl)).grantee FROM pg_type \
       UNION SELECT lomowner FROM pg_largeobject_metadata \
       UNION SELECT (aclexplode(lomacl)).grantee FROM pg_largeobject_metadata \
       UNION SELECT defaclrole FROM pg_default_acl \
       UNION SELECT (aclexplode(defaclacl)).grantee FROM pg_default_acl \
       UNION SELECT collowner FROM pg_collation \
       UNION SELECT oprowner FROM pg_operator \
       UNION SELECT opfowner FROM pg_opfamily \
       UNION SELECT opcowner FROM pg_opclass \
       UNION SELECT conowner FROM pg_conversion \
       UNION SELECT dictowner FROM pg_ts_dict \
       UNION SELECT cfgowner FROM pg_ts_config \
       UNION SELECT extowner FROM pg_extension \
       UNION SELECT evtowner FROM pg_event_trigger \
       UNION SELECT pubowner FROM pg_publication \
       UNION SELECT fdwowner FROM pg_foreign_data_wrapper \
       UNION SELECT (aclexplode(fdwacl)).grantee FROM pg_foreign_data_wrapper \
       UNION SELECT srvowner FROM pg_foreign_server \
       UNION SELECT (aclexplode(srvacl)).grantee FROM pg_foreign_server \
       UNION SELECT umuser FROM pg_user_mapping \
       UNION SELECT unnest(polroles) FROM pg_policy \
       UNION SELECT stxowner FROM pg_statistic_ext \
       UNION SELECT s.setrole FROM pg_db_role_setting s JOIN db ON s.setdatabase = db.oid), \
     closure(role) AS ( \
       SELECT role FROM refs WHERE role <> 0 \
       UNION SELECT m.roleid FROM pg_auth_members m JOIN closure c ON m.member = c.role) \
     SELECT a.oid, a.rolname, a.rolcanlogin, a.rolinherit, a.rolcreatedb, a.rolcreaterole, \
       a.rolreplication, a.rolbypassrls, a.rolconnlimit, \
       coalesce(a.rolvaliduntil::text, ''), coalesce(a.rolpassword, ''), \
       shobj_description(a.oid, 'pg_authid') \
     FROM pg_authid a JOIN closure c ON c.role = a.oid \
     WHERE NOT a.rolsuper AND a.rolname !~ '^pg_' \
     ORDER BY a.rolname";

/// Memberships among the copied roles, and in predefined roles.
const MEMBERSHIPS: &str = "SELECT g.rolname, m.rolname, am.admin_option \
     FROM pg_auth_members am \
     JOIN pg_authid g ON g.oid = am.roleid JOIN pg_authid m ON m.oid = am.member \
     WHERE am.member = ANY($1) AND (am.roleid = ANY($1) OR g.rolname ~ '^pg_') \
     ORDER BY 1, 2";

/// Role settings: everywhere (setdatabase 0) and in this database.
const ROLE_SETTINGS: &str = "SELECT s.setrole, s.setdatabase <> 0, s.setconfig \
     FROM pg_db_role_setting s \
     WHERE s.setrole = ANY($1) \
       AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))";

const DATABASE: &str = "SELECT to_jsonb(d) - 'datacl', pg_encoding_to_char(d.encoding), \
       pg_get_userbyid(d.datdba), d.datacl IS NOT NULL, \
       shobj_description(d.oid, 'pg_database'), pg_database_size(d.oid), \
       (SELECT s.setconfig FROM pg_db_role_setting s \
        WHERE s.setdatabase = d.oid AND s.setrole = 0) \
     FROM pg_database d WHERE d.datname = current_database()";

const DATABASE_GRANTS: &str = "SELECT coalesce(g.rolname, ''), x.privilege_type, x.is_grantable \
     FROM pg_database d CROSS JOIN LATERAL aclexplode(d.datacl) x \
     LEFT JOIN pg_roles g ON g.oid = x.grantee \
     WHERE d.datname = current_database() \
     ORDER BY 1, 2";

const EXTENSIONS: &str = "SELECT e.extname, e.extversion, n.nspname \
     FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY 1";

/// Reads the whole description (but the schema objects, see
/// `schema_objects`), or with `summary` only what a preflight checks (no
/// properties, sequences or roles). Run it in a transaction holding the
/// snapshot.
pub async fn describe(
    client: &Client,
    summary: bool,
) -> Result<PostgresDatabaseDescription, CatalogError> {
    let server_version_num = super::session::server_version_num(client)
        .await
        .map_err(step("reading the server version"))?;
    let system_identifier: String = client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(step("reading the system identifier"))?;
    let tables = tables(client).await?;
    let ((properties, database_bytes), sequences, (roles, memberships)) = if summary {
        Default::default()
    } else {
        (
            properties(client).await?,
            sequences(client).await?,
            roles(client).await?,
        )
    };
    let extensions = client
        .query(EXTENSIONS, &[])
        .await
        .map_err(step("listing extensions"))?
        .iter()
        .map(|row| {
            Ok(PostgresExtension {
                name: row.try_get(0)?,
                version: row.try_get(1)?,
                schema: row.try_get(2)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(step("listing extensions"))?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_largeobject_metadata), \
                    (SELECT coalesce(sum(octet_length(data)), 0)::int8 FROM pg_largeobject)",
            &[],
        )
        .await
        .map_err(step("counting large objects"))?;
    let large_objects: i64 = row.try_get(0).map_err(step("counting large objects"))?;
    let large_object_bytes: i64 = row.try_get(1).map_err(step("counting large objects"))?;
    Ok(PostgresDatabaseDescription {
        server_version_num,
        system_identifier,
        properties: Some(properties),
        tables,
        sequences,
        roles,
        memberships,
        extensions,
        large_objects: u64::try_from(large_objects).unwrap_or(0),
        large_object_bytes: u64::try_from(large_object_bytes).unwrap_or(0),
        schema_objects: Vec::new(),
        database_bytes,
    })
}

async fn properties(client: &Client) -> Result<(PostgresDatabaseProperties, u64), CatalogError> {
    let what = "reading the database's properties";
    let row = client.query_one(DATABASE, &[]).await.map_err(step(what))?;
    let fields: serde_json::Value = row.try_get(0).map_err(step(what))?;
    let text = |name: &str| {
        fields
            .get(name)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let comment: Option<String> = row.try_get(4).map_err(step(what))?;
    let size: i64 = row.try_get(5).map_err(step(what))?;
    let settings: Option<Vec<String>> = row.try_get(6).map_err(step(what))?;
    let grants = client
        .query(DATABASE_GRANTS, &[])
        .await
        .map_err(step("reading the database's privileges"))?
        .iter()
        .map(|row| {
            Ok(PostgresGrant {
                grantee: row.try_get(0)?,
                privilege: row.try_get(1)?,
                grantable: row.try_get(2)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(step("reading the database's privileges"))?;
    // PostgreSQL 15 and 16 call the ICU locale daticulocale; 17 renamed it
    // datlocale (and added the builtin provider).
    let locale = match text("datlocale") {
        locale if !locale.is_empty() => locale,
        _ => text("daticulocale"),
    };
    let properties = PostgresDatabaseProperties {
        owner: row.try_get(2).map_err(step(what))?,
        encoding: row.try_get(1).map_err(step(what))?,
        collate: text("datcollate"),
        ctype: text("datctype"),
        locale_provider: text("datlocprovider"),
        locale,
        icu_rules: text("daticurules"),
        connection_limit: fields
            .get("datconnlimit")
            .and_then(serde_json::Value::as_i64)
            .and_then(|n| i32::try_from(n).ok())
            .unwrap_or(-1),
        has_acl: row.try_get(3).map_err(step(what))?,
        grants,
        settings: parse_settings(settings.unwrap_or_default()),
        has_comment: comment.is_some(),
        comment: comment.unwrap_or_default(),
    };
    Ok((properties, u64::try_from(size).unwrap_or(0)))
}

async fn tables(client: &Client) -> Result<Vec<PostgresTable>, CatalogError> {
    let what = "listing tables";
    let rows = client
        .query(&TABLES.replace("{USER_SCHEMA}", USER_SCHEMA), &[])
        .await
        .map_err(step(what))?;
    let mut oids = Vec::with_capacity(rows.len());
    let mut tables = Vec::with_capacity(rows.len());
    for row in &rows {
        let oid: u32 = row.try_get(0).map_err(step(what))?;
        let bytes: i64 = row.try_get(3).map_err(step(what))?;
        let blocks: i64 = row.try_get(4).map_err(step(what))?;
        oids.push(oid);
        tables.push(PostgresTable {
            schema: row.try_get(1).map_err(step(what))?,
            name: row.try_get(2).map_err(step(what))?,
            bytes: u64::try_from(bytes).unwrap_or(0),
            blocks: u64::try_from(blocks).unwrap_or(0),
            row_estimate: row.try_get(5).map_err(step(what))?,
            columns: Vec::new(),
            binary: true,
            indexes: Vec::new(),
        });
    }
    let index: std::collections::HashMap<u32, usize> =
        oids.iter().enumerate().map(|(i, oid)| (*oid, i)).collect();
    let what = "listing columns";
    for row in client.query(COLUMNS, &[&oids]).await.map_err(step(what))? {
        let oid: u32 = row.try_get(0).map_err(step(what))?;
        if let Some(table) = index.get(&oid).and_then(|i| tables.get_mut(*i)) {
            table.columns.push(row.try_get(1).map_err(step(what))?);
        }
    }
    let what = "listing indexes";
    for row in client.query(INDEXES, &[&oids]).await.map_err(step(what))? {
        let oid: u32 = row.try_get(0).map_err(step(what))?;
        if let Some(table) = index.get(&oid).and_then(|i| tables.get_mut(*i)) {
            table.indexes.push(PostgresIndex {
                oid: row.try_get(1).map_err(step(what))?,
                name: row.try_get(2).map_err(step(what))?,
                definition: row.try_get(3).map_err(step(what))?,
                constraint_oid: row.try_get(4).map_err(step(what))?,
                constraint_type: row.try_get(5).map_err(step(what))?,
                deferrable: row.try_get(6).map_err(step(what))?,
                deferred: row.try_get(7).map_err(step(what))?,
            });
        }
    }
    let what = "checking column types for binary COPY";
    for row in client
        .query(BINARY_SAFE, &[&oids])
        .await
        .map_err(step(what))?
    {
        let oid: u32 = row.try_get(0).map_err(step(what))?;
        let safe: Option<bool> = row.try_get(1).map_err(step(what))?;
        if let Some(table) = index.get(&oid).and_then(|i| tables.get_mut(*i)) {
            table.binary = safe.unwrap_or(true);
        }
    }
    Ok(tables)
}

async fn sequences(client: &Client) -> Result<Vec<PostgresSequence>, CatalogError> {
    let rows = client
        .query(&SEQUENCES.replace("{USER_SCHEMA}", USER_SCHEMA), &[])
        .await
        .map_err(step("listing sequences"))?;
    let mut sequences = Vec::with_capacity(rows.len());
    for row in rows {
        let schema: String = row.try_get(0).map_err(step("listing sequences"))?;
        let name: String = row.try_get(1).map_err(step("listing sequences"))?;
        let what = format!("reading sequence {schema}.{name}");
        // Sequences are not transactional: this is the current value, at
        // least as far as any value the snapshot's rows hold.
        let value = client
            .query_one(
                &format!(
                    "SELECT last_value, is_called FROM {}",
                    qualified(&schema, &name)
                ),
                &[],
            )
            .await
            .map_err(step(what.clone()))?;
        sequences.push(PostgresSequence {
            last_value: value.try_get(0).map_err(step(what.clone()))?,
            is_called: value.try_get(1).map_err(step(what))?,
            schema,
            name,
        });
    }
    Ok(sequences)
}

async fn roles(
    client: &Client,
) -> Result<(Vec<PostgresRole>, Vec<PostgresMembership>), CatalogError> {
    let what = "listing the roles the database refers to";
    let rows = client.query(ROLES, &[]).await.map_err(step(what))?;
    let mut oids = Vec::with_capacity(rows.len());
    let mut roles = Vec::with_capacity(rows.len());
    for row in &rows {
        oids.push(row.try_get::<_, u32>(0).map_err(step(what))?);
        let comment: Option<String> = row.try_get(11).map_err(step(what))?;
        roles.push(PostgresRole {
            name: row.try_get(1).map_err(step(what))?,
            login: row.try_get(2).map_err(step(what))?,
            inherit: row.try_get(3).map_err(step(what))?,
            create_db: row.try_get(4).map_err(step(what))?,
            create_role: row.try_get(5).map_err(step(what))?,
            replication: row.try_get(6).map_err(step(what))?,
            bypass_rls: row.try_get(7).map_err(step(what))?,
            connection_limit: row.try_get(8).map_err(step(what))?,
            valid_until: row.try_get(9).map_err(step(what))?,
            password_verifier: row.try_get(10).map_err(step(what))?,
            settings: Vec::new(),
            database_settings: Vec::new(),
            has_comment: comment.is_some(),
            comment: comment.unwrap_or_default(),
        });
    }
    let what = "reading role settings";
    for row in client
        .query(ROLE_SETTINGS, &[&oids])
        .await
        .map_err(step(what))?
    {
        let oid: u32 = row.try_get(0).map_err(step(what))?;
        let in_database: bool = row.try_get(1).map_err(step(what))?;
        let config: Option<Vec<String>> = row.try_get(2).map_err(step(what))?;
        let Some(role) = oids
            .iter()
            .position(|o| *o == oid)
            .and_then(|i| roles.get_mut(i))
        else {
            continue;
        };
        let settings = parse_settings(config.unwrap_or_default());
        if in_database {
            role.database_settings = settings;
        } else {
            role.settings = settings;
        }
    }
    let what = "reading role memberships";
    let memberships = client
        .query(MEMBERSHIPS, &[&oids])
        .await
        .map_err(step(what))?
        .iter()
        .map(|row| {
            Ok(PostgresMembership {
                group: row.try_get(0)?,
                member: row.try_get(1)?,
                admin_option: row.try_get(2)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(step(what))?;
    Ok((roles, memberships))
}

/// `name=value` entries of a `setconfig` array.
fn parse_settings(config: Vec<String>) -> Vec<PostgresSetting> {
    config
        .into_iter()
        .filter_map(|entry| {
            let (name, value) = entry.split_once('=')?;
            Some(PostgresSetting {
                name: name.to_owned(),
                value: value.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_split_at_the_first_equals_sign() {
        let settings = parse_settings(vec![
            "search_path=\"$user\", public".to_owned(),
            "application_name=a=b".to_owned(),
            "broken".to_owned(),
        ]);
        assert_eq!(settings.len(), 2);
        assert_eq!(settings[0].name, "search_path");
        assert_eq!(settings[0].value, "\"$user\", public");
        assert_eq!(settings[1].value, "a=b");
    }
}
