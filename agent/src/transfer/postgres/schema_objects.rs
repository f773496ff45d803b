//! The schema, object by object, as the same catalog query sees it on the
//! source (in the snapshot) and on the target (after the copy), and the
//! comparison of the two.
//!
//! Each object is an identity ("table public.items", "index
//! public.items_pkey", "function public.total(integer)") and a definition:
//! what is compared about it, as text (owner, privileges, comment, and the
//! server's own rendering of its definition: `pg_get_indexdef`,
//! `pg_get_constraintdef`, `pg_get_triggerdef`, `pg_get_viewdef`...).
//!
//! What is deliberately left out, because it legitimately differs between a
//! source and a newer target:
//! - extension versions, and the objects that belong to extensions (a
//!   newer server ships newer extension scripts);
//! - NOT NULL constraints as pg_constraint rows (PostgreSQL 18 records
//!   them there; the columns' `attnotnull` is compared instead);
//! - the MAINTAIN privilege (PostgreSQL 17 added it to owners' defaults);
//! - how views and rules are printed (see `deparsed`);
//! - constraints derived from a parent's (partitions), invalid indexes
//!   (pg_dump skips them), OIDs, statistics.

use std::collections::BTreeMap;

use navette_proto::v1::SchemaObject;
use tokio_postgres::Client;

use super::describe::{CatalogError, USER_SCHEMA, step};

/// An ACL (aclitem[] expression) as sorted `grantee=PRIVILEGE[*]/grantor`
/// items, MAINTAIN left out. NULL and empty ACLs (everything revoked) give
/// an empty string (aclexplode refuses empty arrays).
fn acl(expression: &str) -> String {
    format!(
        "(SELECT coalesce(string_agg(item, ',' ORDER BY item), '') FROM ( \
           SELECT coalesce(g.rolname, 'PUBLIC') || '=' || x.privilege_type \
                  || CASE WHEN x.is_grantable THEN '*' ELSE '' END \
                  || '/' || coalesce(r.rolname, x.grantor::text) AS item \
           FROM aclexplode(CASE WHEN cardinality({expression}) > 0 THEN {expression} END) x \
           LEFT JOIN pg_roles g ON g.oid = x.grantee \
           LEFT JOIN pg_roles r ON r.oid = x.grantor \
           WHERE x.privilege_type <> 'MAINTAIN') AS acl_items)"
    )
}

/// Not a member of an extension.
fn own(catalog: &str, oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT FROM pg_depend e WHERE e.deptype = 'e' \
         AND e.classid = '{catalog}'::regclass AND e.objid = {oid})"
    )
}

/// A view's or rule's definition as the server renders it, made comparable
/// across versions: PostgreSQL 16 stopped qualifying columns with their
/// table when a query has only one, so qualifiers are removed and
/// whitespace collapsed; the relations the definition reads (from
/// pg_depend) are listed beside it, so that a definition reading another
/// table still differs.
fn deparsed(definition: &str, relation: &str) -> String {
    format!(
        "regexp_replace(regexp_replace({definition}, \
           '(\\m[[:alpha:]_][[:alnum:]_$]*|\"([^\"]|\"\")+\")\\.', '', 'g'), '\\s+', ' ', 'g') \
         || ' reads ' || coalesce((SELECT string_agg(DISTINCT rn.nspname || '.' || rc.relname, ',' \
              ORDER BY rn.nspname || '.' || rc.relname) \
            FROM pg_rewrite rw JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass \
              AND d.objid = rw.oid AND d.refclassid = 'pg_class'::regclass \
            JOIN pg_class rc ON rc.oid = d.refobjid \
            JOIN pg_namespace rn ON rn.oid = rc.relnamespace \
            WHERE rw.ev_class = {relation} AND rc.oid <> {relation}), '')"
    )
}

/// The query: rows of (identity, definition), one per object.
pub fn query() -> String {
    let ns = format!("(SELECT n.oid, n.nspname FROM pg_namespace n WHERE {USER_SCHEMA})");
    let parts = [
        // Schemas.
        format!(
            "SELECT 'schema ' || n.nspname, \
               format('owner=%s; acl=%s; comment=%L', pg_get_userbyid(n.nspowner), {acl}, \
                      obj_description(n.oid, 'pg_namespace')) \
             FROM pg_namespace n WHERE {USER_SCHEMA} AND {own}",
            acl = acl("coalesce(n.nspacl, acldefault('n'::\"char\", n.nspowner))"),
            own = own("pg_namespace", "n.oid"),
        ),
        // Tables, views, sequences, foreign tables, composite types.
        format!(
            "SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table' \
                      WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' \
                      WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table' \
                      ELSE 'composite type' END || ' ' || n.nspname || '.' || c.relname, \
               format('owner=%s; persistence=%s; acl=%s; options=%L; row security=%s/%s; \
                       replica identity=%s; partition key=%L; parents=%L; bound=%L; \
                       definition=%L; populated=%L; comment=%L', \
                 pg_get_userbyid(c.relowner), c.relpersistence, {acl}, \
                 (SELECT string_agg(o, ',' ORDER BY o) FROM unnest(c.reloptions) o), \
                 c.relrowsecurity, c.relforcerowsecurity, c.relreplident, \
                 CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END, \
                 (SELECT string_agg(pn.nspname || '.' || p.relname, ',' ORDER BY i.inhseqno) \
                    FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent \
                    JOIN pg_namespace pn ON pn.oid = p.relnamespace WHERE i.inhrelid = c.oid), \
                 CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END, \
                 CASE WHEN c.relkind IN ('v', 'm') THEN {view} END, \
                 CASE WHEN c.relkind = 'm' THEN c.relispopulated::text END, \
                 obj_description(c.oid, 'pg_class')) \
             FROM pg_class c JOIN {ns} n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c') AND {own}",
            view = deparsed("pg_get_viewdef(c.oid)", "c.oid"),
            acl = acl(
                "coalesce(c.relacl, acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::\"char\", c.relowner))"
            ),
            own = own("pg_class", "c.oid"),
        ),
        // Sequence parameters and ownership.
        format!(
            "SELECT 'sequence ' || n.nspname || '.' || c.relname || ' parameters', \
               format('type=%s; start=%s; increment=%s; min=%s; max=%s; cache=%s; cycle=%s; \
                       owned by=%L', \
                 format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax, \
                 s.seqcache, s.seqcycle, \
                 (SELECT rn.nspname || '.' || r.relname || '.' || a.attname \
                    FROM pg_depend d JOIN pg_class r ON r.oid = d.refobjid \
                    JOIN pg_namespace rn ON rn.oid = r.relnamespace \
                    JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                      AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') \
                    LIMIT 1)) \
             FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid \
             JOIN {ns} n ON n.oid = c.relnamespace WHERE {own}",
            own = own("pg_class", "c.oid"),
        ),
        // Columns.
        format!(
            "SELECT 'column ' || n.nspname || '.' || c.relname || '.' || a.attname, \
               format('position=%s; type=%s; not null=%s; default=%L; identity=%L; \
                       generated=%L; collation=%L; acl=%s; comment=%L', \
                 row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum), \
                 format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                 pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated, \
                 (SELECT cn.nspname || '.' || co.collname FROM pg_collation co \
                    JOIN pg_namespace cn ON cn.oid = co.collnamespace \
                    WHERE co.oid = a.attcollation AND a.attcollation <> t.typcollation), \
                 {acl}, col_description(a.attrelid, a.attnum)) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN {ns} n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attnum > 0 AND NOT a.attisdropped \
               AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c') AND {own}",
            acl = acl("a.attacl"),
            own = own("pg_class", "c.oid"),
        ),
        // Constraints of tables and domains (not NOT NULL rows, not those
        // derived from a parent's).
        format!(
            "SELECT 'constraint ' || n.nspname || '.' || coalesce(r.relname, t.typname) || '.' \
                    || co.conname, \
               format('definition=%s; validated=%s; comment=%L', \
                 pg_get_constraintdef(co.oid), co.convalidated, \
                 obj_description(co.oid, 'pg_constraint')) \
             FROM pg_constraint co JOIN {ns} n ON n.oid = co.connamespace \
             LEFT JOIN pg_class r ON r.oid = co.conrelid \
             LEFT JOIN pg_type t ON t.oid = co.contypid \
             WHERE co.contype <> 'n' AND co.conparentid = 0 \
               AND {own_table} AND {own_type}",
            own_table = own("pg_class", "co.conrelid"),
            own_type = own("pg_type", "co.contypid"),
        ),
        // Indexes.
        format!(
            "SELECT 'index ' || n.nspname || '.' || ic.relname, \
               format('definition=%s; clustered=%s; replica identity=%s; comment=%L', \
                 pg_get_indexdef(i.indexrelid), i.indisclustered, i.indisreplident, \
                 obj_description(i.indexrelid, 'pg_class')) \
             FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
             JOIN {ns} n ON n.oid = ic.relnamespace \
             WHERE i.indisvalid AND {own}",
            own = own("pg_class", "i.indrelid"),
        ),
        // Triggers.
        format!(
            "SELECT 'trigger ' || n.nspname || '.' || c.relname || '.' || tg.tgname, \
               format('definition=%s; enabled=%s; comment=%L', pg_get_triggerdef(tg.oid), \
                 tg.tgenabled, obj_description(tg.oid, 'pg_trigger')) \
             FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid \
             JOIN {ns} n ON n.oid = c.relnamespace \
             WHERE NOT tg.tgisinternal AND {own}",
            own = own("pg_class", "c.oid"),
        ),
        // Rules (not the views' own).
        format!(
            "SELECT 'rule ' || n.nspname || '.' || c.relname || '.' || rw.rulename, \
               format('definition=%s; enabled=%s; comment=%L', \
                 {rule}, rw.ev_enabled, \
                 obj_description(rw.oid, 'pg_rewrite')) \
             FROM pg_rewrite rw JOIN pg_class c ON c.oid = rw.ev_class \
             JOIN {ns} n ON n.oid = c.relnamespace \
             WHERE rw.rulename <> '_RETURN' AND {own}",
            rule = deparsed("pg_get_ruledef(rw.oid)", "c.oid"),
            own = own("pg_class", "c.oid"),
        ),
        // Row security policies.
        format!(
            "SELECT 'policy ' || n.nspname || '.' || c.relname || '.' || p.polname, \
               format('command=%s; permissive=%s; roles=%s; using=%L; check=%L', \
                 p.polcmd, p.polpermissive, \
                 (SELECT string_agg(name, ',' ORDER BY name) FROM ( \
                    SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r) END AS name \
                    FROM unnest(p.polroles) r) AS roles), \
                 pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)) \
             FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid \
             JOIN {ns} n ON n.oid = c.relnamespace WHERE {own}",
            own = own("pg_class", "c.oid"),
        ),
        // Functions, procedures, aggregates. SQL-standard bodies have no
        // source text: their rendering is compared instead.
        format!(
            "SELECT 'function ' || n.nspname || '.' || p.proname || '(' \
                    || pg_get_function_identity_arguments(p.oid) || ')', \
               format('kind=%s; language=%s; returns=%L; body=%s; volatility=%s; strict=%s; \
                       security definer=%s; leakproof=%s; parallel=%s; cost=%s; rows=%s; \
                       config=%L; owner=%s; acl=%s; comment=%L', \
                 p.prokind, l.lanname, pg_get_function_result(p.oid), \
                 md5(CASE WHEN p.prokind IN ('f', 'p') AND coalesce(p.prosrc, '') = '' \
                          THEN pg_get_functiondef(p.oid) \
                          ELSE coalesce(p.prosrc, '') || coalesce(p.probin, '') END), \
                 p.provolatile, p.proisstrict, p.prosecdef, p.proleakproof, p.proparallel, \
                 p.procost, p.prorows, array_to_string(p.proconfig, ','), \
                 pg_get_userbyid(p.proowner), {acl}, obj_description(p.oid, 'pg_proc')) \
             FROM pg_proc p JOIN {ns} n ON n.oid = p.pronamespace \
             JOIN pg_language l ON l.oid = p.prolang WHERE {own}",
            acl = acl("coalesce(p.proacl, acldefault('f'::\"char\", p.proowner))"),
            own = own("pg_proc", "p.oid"),
        ),
        // Types: enums, domains, ranges, base types (row types are the
        // relations', array and multirange types come with their type).
        format!(
            "SELECT 'type ' || n.nspname || '.' || t.typname, \
               format('kind=%s; base=%L; not null=%s; default=%L; collation=%L; labels=%L; \
                       subtype=%L; owner=%s; acl=%s; comment=%L', \
                 t.typtype, \
                 CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END, \
                 t.typnotnull, t.typdefault, \
                 (SELECT co.collname FROM pg_collation co WHERE co.oid = t.typcollation \
                    AND t.typtype = 'd'), \
                 (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) \
                    FROM pg_enum e WHERE e.enumtypid = t.oid), \
                 (SELECT format_type(r.rngsubtype, NULL) FROM pg_range r \
                    WHERE r.rngtypid = t.oid), \
                 pg_get_userbyid(t.typowner), {acl}, obj_description(t.oid, 'pg_type')) \
             FROM pg_type t JOIN {ns} n ON n.oid = t.typnamespace \
             WHERE t.typtype IN ('b', 'd', 'e', 'r') AND t.typrelid = 0 \
               AND NOT EXISTS (SELECT FROM pg_type e WHERE e.typarray = t.oid) AND {own}",
            acl = acl("coalesce(t.typacl, acldefault('T'::\"char\", t.typowner))"),
            own = own("pg_type", "t.oid"),
        ),
        // Extensions, by name and schema (not version).
        "SELECT 'extension ' || e.extname, format('schema=%s; comment=%L', n.nspname, \
               obj_description(e.oid, 'pg_extension')) \
         FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            .to_owned(),
        // Default privileges.
        format!(
            "SELECT 'default privileges of ' || pg_get_userbyid(d.defaclrole) || ' in ' \
                    || coalesce(n.nspname, 'every schema') || ' on ' || d.defaclobjtype::text, \
               format('acl=%s', {acl}) \
             FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace",
            acl = acl("d.defaclacl"),
        ),
        // Large objects.
        format!(
            "SELECT 'large object ' || m.oid, \
               format('owner=%s; acl=%s; comment=%L', pg_get_userbyid(m.lomowner), {acl}, \
                 obj_description(m.oid, 'pg_largeobject')) \
             FROM pg_largeobject_metadata m",
            acl = acl("coalesce(m.lomacl, acldefault('L'::\"char\", m.lomowner))"),
        ),
        // Collations.
        format!(
            "SELECT 'collation ' || n.nspname || '.' || co.collname, \
               format('provider=%s; collate=%L; ctype=%L; locale=%L; deterministic=%s; owner=%s', \
                 co.collprovider, co.collcollate, co.collctype, \
                 coalesce(to_jsonb(co) ->> 'colllocale', to_jsonb(co) ->> 'colliculocale'), \
                 co.collisdeterministic, pg_get_userbyid(co.collowner)) \
             FROM pg_collation co JOIN {ns} n ON n.oid = co.collnamespace WHERE {own}",
            own = own("pg_collation", "co.oid"),
        ),
        // Operators.
        format!(
            "SELECT 'operator ' || n.nspname || '.' || o.oprname || '(' \
                    || coalesce(format_type(nullif(o.oprleft, 0), NULL), 'NONE') || ', ' \
                    || coalesce(format_type(nullif(o.oprright, 0), NULL), 'NONE') || ')', \
               format('function=%s; owner=%s', o.oprcode::regprocedure, \
                 pg_get_userbyid(o.oprowner)) \
             FROM pg_operator o JOIN {ns} n ON n.oid = o.oprnamespace WHERE {own}",
            own = own("pg_operator", "o.oid"),
        ),
        // Text search configurations and dictionaries.
        format!(
            "SELECT 'text search configuration ' || n.nspname || '.' || c.cfgname, \
               format('owner=%s', pg_get_userbyid(c.cfgowner)) \
             FROM pg_ts_config c JOIN {ns} n ON n.oid = c.cfgnamespace WHERE {own}",
            own = own("pg_ts_config", "c.oid"),
        ),
        format!(
            "SELECT 'text search dictionary ' || n.nspname || '.' || d.dictname, \
               format('owner=%s; options=%L', pg_get_userbyid(d.dictowner), d.dictinitoption) \
             FROM pg_ts_dict d JOIN {ns} n ON n.oid = d.dictnamespace WHERE {own}",
            own = own("pg_ts_dict", "d.oid"),
        ),
        // Extended statistics.
        format!(
            "SELECT 'statistics ' || n.nspname || '.' || s.stxname, \
               format('definition=%s; owner=%s', pg_get_statisticsobjdef(s.oid), \
                 pg_get_userbyid(s.stxowner)) \
             FROM pg_statistic_ext s JOIN {ns} n ON n.oid = s.stxnamespace WHERE {own}",
            own = own("pg_statistic_ext", "s.oid"),
        ),
        // Event triggers.
        format!(
            "SELECT 'event trigger ' || t.evtname, \
               format('event=%s; function=%s; enabled=%s; tags=%L; owner=%s', t.evtevent, \
                 t.evtfoid::regprocedure, t.evtenabled, t.evttags, pg_get_userbyid(t.evtowner)) \
             FROM pg_event_trigger t WHERE {own}",
            own = own("pg_event_trigger", "t.oid"),
        ),
        // Foreign data wrappers and servers.
        format!(
            "SELECT 'foreign data wrapper ' || w.fdwname, \
               format('owner=%s; options=%L', pg_get_userbyid(w.fdwowner), w.fdwoptions) \
             FROM pg_foreign_data_wrapper w WHERE {own}",
            own = own("pg_foreign_data_wrapper", "w.oid"),
        ),
        format!(
            "SELECT 'foreign server ' || s.srvname, \
               format('owner=%s; options=%L', pg_get_userbyid(s.srvowner), s.srvoptions) \
             FROM pg_foreign_server s WHERE {own}",
            own = own("pg_foreign_server", "s.oid"),
        ),
        // Casts between types of the database's own.
        format!(
            "SELECT 'cast ' || format_type(c.castsource, NULL) || ' as ' \
                    || format_type(c.casttarget, NULL), \
               format('function=%s; context=%s; method=%s', \
                 CASE WHEN c.castfunc <> 0 THEN c.castfunc::regprocedure::text END, \
                 c.castcontext, c.castmethod) \
             FROM pg_cast c WHERE c.oid >= 16384 AND {own}",
            own = own("pg_cast", "c.oid"),
        ),
        // Publications (subscriptions are never copied), but those a
        // migration's replication makes on the source (never restored).
        "SELECT 'publication ' || p.pubname, \
           format('owner=%s; all tables=%s', pg_get_userbyid(p.pubowner), p.puballtables) \
         FROM pg_publication p WHERE p.pubname NOT LIKE 'navette\\_m\\_%'"
            .to_owned(),
    ];
    format!(
        "SELECT identity, string_agg(definition, ' | ' ORDER BY definition) FROM ( {} ) \
         AS objects(identity, definition) GROUP BY identity ORDER BY identity",
        parts.join(" UNION ALL ")
    )
}

/// Reads the schema's objects.
pub async fn read(client: &Client) -> Result<Vec<SchemaObject>, CatalogError> {
    let what = "describing the schema object by object";
    client
        .query(&query(), &[])
        .await
        .map_err(step(what))?
        .iter()
        .map(|row| {
            Ok(SchemaObject {
                identity: row.try_get(0)?,
                definition: row.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(step(what))
}

/// The differences between the source's objects and the target's, one
/// sentence each (empty: they match).
pub fn compare(source: &[SchemaObject], target: &[SchemaObject]) -> Vec<String> {
    let source: BTreeMap<&str, &str> = source
        .iter()
        .map(|o| (o.identity.as_str(), o.definition.as_str()))
        .collect();
    let target: BTreeMap<&str, &str> = target
        .iter()
        .map(|o| (o.identity.as_str(), o.definition.as_str()))
        .collect();
    let mut differences = Vec::new();
    for (identity, definition) in &source {
        match target.get(identity) {
            None => differences.push(format!("{identity}: missing on the target")),
            Some(other) if other != definition => differences.push(format!(
                "{identity}: differs: source {definition}; target {other}"
            )),
            Some(_) => {}
        }
    }
    for identity in target.keys() {
        if !source.contains_key(identity) {
            differences.push(format!("{identity}: on the target only"));
        }
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(identity: &str, definition: &str) -> SchemaObject {
        SchemaObject {
            identity: identity.to_owned(),
            definition: definition.to_owned(),
        }
    }

    #[test]
    fn differences_name_the_object() {
        let source = [
            object("table public.a", "owner=alice"),
            object("index public.a_pkey", "x"),
            object("view public.v", "definition=1"),
        ];
        let target = [
            object("table public.a", "owner=alice"),
            object("view public.v", "definition=2"),
            object("trigger public.a.t", "y"),
        ];
        assert_eq!(
            compare(&source, &target),
            vec![
                "index public.a_pkey: missing on the target".to_owned(),
                "view public.v: differs: source definition=1; target definition=2".to_owned(),
                "trigger public.a.t: on the target only".to_owned(),
            ]
        );
        assert!(compare(&source, &source).is_empty());
    }
}
