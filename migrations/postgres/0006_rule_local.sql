-- Policy rules may be limited to a program or a local user on the device (`--program`,
-- `--local-user`), as the socket shim reports them. NULL: any, which every rule written before
-- meant. Keep in step with ../sqlite/0006_rule_local.sql.
ALTER TABLE policy_rules ADD COLUMN program TEXT;
ALTER TABLE policy_rules ADD COLUMN local_user TEXT;
