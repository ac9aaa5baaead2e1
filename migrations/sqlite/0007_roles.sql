-- Roles (issue 10): every org has the built-in roles purchasing, engineer and
-- finance from its creation. Orgs created before this migration get them
-- here, with the same specs as `RoleSpec::builtin` (a unit test compares).
INSERT INTO roles (org_id, name, spec, updated_at)
SELECT id, 'purchasing', '{"data_scope":"own","grants":[{"module":"orders"}],"menus":[],"payment":{"allowed":true,"per_tx":500000,"daily":2000000,"monthly":10000000},"advanced":false}', created_at
FROM orgs WHERE NOT EXISTS (SELECT 1 FROM roles r WHERE r.org_id = orgs.id AND r.name = 'purchasing');

INSERT INTO roles (org_id, name, spec, updated_at)
SELECT id, 'engineer', '{"data_scope":"own","grants":[{"module":"orders","function":"download_files"},{"module":"files"}],"menus":[],"payment":{"allowed":false,"per_tx":0,"daily":0,"monthly":0},"advanced":true}', created_at
FROM orgs WHERE NOT EXISTS (SELECT 1 FROM roles r WHERE r.org_id = orgs.id AND r.name = 'engineer');

INSERT INTO roles (org_id, name, spec, updated_at)
SELECT id, 'finance', '{"data_scope":"all","grants":[{"module":"prepaid"}],"menus":[],"payment":{"allowed":true,"per_tx":5000000,"daily":20000000,"monthly":100000000},"advanced":false}', created_at
FROM orgs WHERE NOT EXISTS (SELECT 1 FROM roles r WHERE r.org_id = orgs.id AND r.name = 'finance');

-- "Is this role in use?" (a role held by a member cannot be deleted).
CREATE INDEX members_role ON members (org_id, role);
