"""Keystone's side of the OpenStack lab: the identities and the catalog, and connections as
the lab's users.

`keystone-manage bootstrap` (stackdb.migrations) makes the admin user and project, the roles
admin, manager, member, reader and service, and the identity endpoints. The rest is made
through Keystone's API, as devstack's create_keystone_accounts and each service's
create_*_accounts do: the `service` project with a user per service (roles admin and
service: Neutron lets only `service` touch port bindings, Nova lets only `service` send it
external events), the tenant `demo` (user demo, role member; the cloud's admin also holds
role admin in it: the lab's operator, who places the tenant's servers on a chosen hypervisor
and live-migrates them, both admin-only in Nova) and every service's endpoints.
This runs once per cache digest (stackdb.py); the result is part of the cached databases.
"""

from __future__ import annotations

from ovsnat.lab.openstack import stackconf as sc
from ovsnat.lab.openstack.netns import inside

# A service behind keystonemiddleware answers 503 when it cannot validate a token in time
# (seen once, at a bring-up, with the machine's two cores loaded by other labs): the lab's
# clients retry a 503 twice, as keystoneauth can for any client.
STATUS_CODE_RETRIES = 2


def connect(user: str, project: str):
    """openstacksdk as `user` in `project` (Default domain) against the lab's Keystone. Use
    it inside the services namespace (netns.inside): every endpoint is on its loopback."""
    import openstack

    return openstack.connection.Connection(
        auth_type="password",
        region_name=sc.REGION,
        interface="public",
        status_code_retries=STATUS_CODE_RETRIES,
        auth={
            "auth_url": sc.KEYSTONE_URL,
            "username": user,
            "password": sc.password(user),
            "project_name": project,
            "user_domain_id": "default",
            "project_domain_id": "default",
        },
    )


def admin():
    return connect(sc.ADMIN_USER, "admin")


def demo():
    return connect(sc.DEMO, sc.DEMO)


def operator():
    """The cloud's admin in the tenant's project (role admin there): the servers it boots
    are the tenant's, and it may pick their host and live-migrate them."""
    return connect(sc.ADMIN_USER, sc.DEMO)


def cli_env(user: str = sc.DEMO, project: str = sc.DEMO) -> dict[str, str]:
    """The `openstack` command's environment for `user` (as an openrc file sets it)."""
    return {
        "OS_AUTH_URL": sc.KEYSTONE_URL,
        "OS_USERNAME": user,
        "OS_PASSWORD": sc.password(user),
        "OS_PROJECT_NAME": project,
        "OS_USER_DOMAIN_ID": "default",
        "OS_PROJECT_DOMAIN_ID": "default",
        "OS_REGION_NAME": sc.REGION,
        "OS_IDENTITY_API_VERSION": "3",
        "OS_INTERFACE": "public",
        "OS_STATUS_CODE_RETRIES": str(STATUS_CODE_RETRIES),
    }


def create_identities(ns: str) -> None:
    """Module doc: projects, users, role assignments and the catalog, as the lab's admin."""
    conn = admin()
    with inside(ns):
        idp = conn.identity
        roles = {r.name: r for r in idp.roles()}
        service = idp.create_project(name=sc.SERVICE_PROJECT, domain_id="default")
        tenant = idp.create_project(name=sc.DEMO, domain_id="default")
        for name in sc.SERVICE_USERS:
            user = idp.create_user(
                name=name,
                password=sc.password(name),
                default_project_id=service.id,
                domain_id="default",
            )
            for role in ("admin", "service"):
                idp.assign_project_role_to_user(service, user, roles[role])
        user = idp.create_user(
            name=sc.DEMO,
            password=sc.password(sc.DEMO),
            default_project_id=tenant.id,
            domain_id="default",
        )
        idp.assign_project_role_to_user(tenant, user, roles["member"])
        admin_user = idp.find_user(sc.ADMIN_USER, domain_id="default")
        idp.assign_project_role_to_user(tenant, admin_user, roles["admin"])
        for name, (kind, url) in sc.CATALOG.items():
            if kind == "identity":  # keystone-manage bootstrap made these
                continue
            svc = idp.create_service(name=name, type=kind)
            for interface in ("public", "internal", "admin"):
                idp.create_endpoint(
                    service_id=svc.id, interface=interface, url=url, region_id=sc.REGION
                )
