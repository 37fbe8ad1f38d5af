-- Undo 0002.roles: revoke everything granted on this database's objects. Roles belong to the
-- whole cluster, so each is dropped only when nothing else uses it: no other role is a member
-- and no other database holds privileges for it (DROP ROLE refuses then, and we keep it).

DO $roles$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['tracewriter_writer', 'tracewriter_reader'] LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role);

        EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA observability FROM %I', v_role);
        EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA observability FROM %I', v_role);
        EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA observability FROM %I', v_role);
        EXECUTE format('REVOKE ALL ON SCHEMA observability FROM %I', v_role);

        -- DROP ROLE would silently remove memberships; a member is a user of the role. (On
        -- PostgreSQL 16+ the non-superuser who created a role is a member with ADMIN OPTION;
        -- that one does not count.)
        IF EXISTS (
            SELECT 1
            FROM pg_catalog.pg_auth_members AS m
            JOIN pg_catalog.pg_roles AS r ON r.oid = m.roleid
            WHERE r.rolname = v_role
              AND m.member <> (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
        ) THEN
            RAISE NOTICE 'tracewriter: role % kept: other roles are members of it', v_role;
            CONTINUE;
        END IF;
        BEGIN
            EXECUTE format('DROP ROLE %I', v_role);
        EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
            RAISE NOTICE 'tracewriter: role % kept: %', v_role, SQLERRM;
        END;
    END LOOP;
END
$roles$;
