"""tests/fake_gcp.py's fake, plus what bake_vm_image.sh and create_instance.sh's baked-family lookup
ask of Compute Engine v1 (a subclass: fake_gcp.py itself is left as it is):

- images.insert (from a VM's boot disk), images.get, images.getFromFamily for the project's own
  families, global operations get / wait;
- instances.delete (a zone operation);
- a VM whose startup script pulls an image and powers it off: it reads RUNNING, then TERMINATED.

Each answer names its source in a comment (Compute Engine's REST reference, v1).
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field

from fake_gcp import COMPUTE_PREFIX, FakeGcp, Recorded, _error


@dataclass
class FakeComputeImages(FakeGcp):
    # project -> image name -> image resource.
    images: dict[str, dict[str, dict]] = field(default_factory=dict)
    # How many instances.get calls a VM inserted with a startup-script reads RUNNING before it reads
    # TERMINATED (its script powered it off); None: it never powers off (a pull that failed).
    gets_until_terminated: int | None = 2
    # When set, images.getFromFamily of the project's own families answers 403 (a caller without
    # compute.images.getFromFamily on the project).
    refuse_own_families: bool = False

    def add_image(self, project: str, name: str, family: str, disk_gb: int = 100) -> None:
        self.images.setdefault(project, {})[name] = self._image(project, name, family, "", disk_gb)

    def _image(self, project: str, name: str, family: str, source_disk: str, disk_gb: int) -> dict:
        # Image resource (compute/docs/reference/rest/v1/images): name, family, status READY once made,
        # sourceDisk, diskSizeGb ("Size of the image when restored onto a persistent disk (in GB)": the
        # source disk's size; a VM's boot disk from it may not be smaller), creationTimestamp
        # (RFC 3339), selfLink.
        return {
            "kind": "compute#image",
            "name": name,
            "family": family,
            "status": "READY",
            "sourceDisk": source_disk,
            "diskSizeGb": str(disk_gb),
            "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime()),
            "selfLink": f"{self.url}{COMPUTE_PREFIX}projects/{project}/global/images/{name}",
        }

    def _compute(self, rec: Recorded, path: str) -> tuple[int, dict] | None:
        base = f"{self.url}{COMPUTE_PREFIX}"
        m = re.fullmatch(r"projects/([^/]+)/global/images/family/([^/]+)", path)
        if m and rec.method == "GET" and m.group(1) in self.images:
            # images.getFromFamily: "the latest image that is part of an image family and is not
            # deprecated" (compute/docs/reference/rest/v1/images/getFromFamily); 404 when there is none.
            project, family = m.groups()
            if self.refuse_own_families:
                # getFromFamily needs the IAM permission compute.images.getFromFamily on the project
                # (compute/docs/reference/rest/v1/images/getFromFamily, "Authorization"); 403 with
                # the legacy reason "forbidden" (wording unverified: scripts match nothing of it).
                return _error(
                    403,
                    "PERMISSION_DENIED",
                    f"Required 'compute.images.getFromFamily' permission for"
                    f" 'projects/{project}/global/images/family/{family}'",
                    reason="forbidden",
                )
            found = [i for i in self.images[project].values() if i["family"] == family]
            if not found:
                return self._not_found(f"projects/{project}/global/images/family/{family}")
            return 200, found[-1]  # the images dict keeps insertion order: the last one is the latest
        m = re.fullmatch(r"projects/([^/]+)/global/images/([^/]+)", path)
        if m and rec.method == "GET" and m.group(2) != "family":
            # images.get (compute/docs/reference/rest/v1/images/get): the image, or 404 notFound.
            image = self.images.get(m.group(1), {}).get(m.group(2))
            return (
                (200, image)
                if image
                else self._not_found(f"projects/{m.group(1)}/global/images/{m.group(2)}")
            )
        m = re.fullmatch(r"projects/([^/]+)/global/images", path)
        if m and rec.method == "POST":
            return self._insert_image(rec, m.group(1))
        m = re.fullmatch(r"projects/([^/]+)/global/operations/([^/]+?)(/wait)?", path)
        if m:
            return self._global_poll(m.group(2))
        m = re.fullmatch(r"(projects/([^/]+)/zones/([^/]+)/instances/([^/]+))", path)
        if m and rec.method == "DELETE":
            # instances.delete (compute/docs/reference/rest/v1/instances/delete): a zone Operation;
            # the boot disk goes with it (autoDelete, gcloud's default for the boot disk).
            key, project, zone, _ = m.groups()
            if key not in self.instances:
                return self._not_found(key)
            del self.instances[key]
            op = f"operation-{uuid.uuid4().hex[:12]}-delete"
            self.operations[op] = {
                "project": project,
                "zone": zone,
                "target": f"{base}{key}",
                "states": ["RUNNING", "DONE"],
                "error": None,
                "type": "delete",
            }
            return 200, self._zone_op(op, "PENDING")
        if m and rec.method == "GET" and m.group(1) in self.instances:
            return 200, self._advance(self.instances[m.group(1)])
        return super()._compute(rec, path)

    def _check_insert(self, project: str, zone: str, body: dict) -> tuple[int, dict] | None:
        # A boot disk from one of the project's own families is known here; fake_gcp checks the rest.
        own = {(p, i["family"]) for p, images in self.images.items() for i in images.values()}
        disks = []
        for disk in body.get("disks") or []:
            src = (disk.get("initializeParams") or {}).get("sourceImage", "")
            fam = re.search(r"projects/([^/]+)/global/images/family/([^/]+)$", src)
            if not (fam and fam.groups() in own):
                disks.append(disk)
        return super()._check_insert(project, zone, {**body, "disks": disks})

    def _advance(self, instance: dict) -> dict:
        """A VM inserted with a startup-script runs it and powers itself off: its status goes
        RUNNING -> TERMINATED, as after a shutdown from the guest OS (compute/docs/instances/
        instance-life-cycle: "TERMINATED: the instance is stopped")."""
        items = (instance.get("metadata") or {}).get("items") or []
        if self.gets_until_terminated is None or not any(i.get("key") == "startup-script" for i in items):
            return instance
        left = instance.setdefault("_gets_left", self.gets_until_terminated)
        if left <= 0:
            instance["status"] = "TERMINATED"
        instance["_gets_left"] = left - 1
        return {k: v for k, v in instance.items() if not k.startswith("_")}

    def _insert_image(self, rec: Recorded, project: str) -> tuple[int, dict]:
        # images.insert (compute/docs/reference/rest/v1/images/insert): body name, family, sourceDisk;
        # answers a global Operation. Making an image from a disk attached to a running VM needs
        # forceCreate (gcloud compute images create --help, --force); refused here as 400 with the
        # reason resourceInUseByAnotherResource (its wording is unverified: scripts match nothing of it).
        body = dict(rec.body or {})
        name = body.get("name", "")
        disk = body.get("sourceDisk", "")
        m = re.search(r"projects/([^/]+)/zones/([^/]+)/disks/([^/]+)$", disk)
        if not m:
            return _error(
                400,
                "INVALID_ARGUMENT",
                f"Invalid value for field 'resource.sourceDisk': '{disk}'.",
                reason="invalid",
            )
        instance = self.instances.get(f"projects/{m.group(1)}/zones/{m.group(2)}/instances/{m.group(3)}")
        if instance is None:
            return self._not_found(f"projects/{m.group(1)}/zones/{m.group(2)}/disks/{m.group(3)}")
        if instance.get("status") != "TERMINATED" and not body.get("forceCreate"):
            return _error(
                400,
                "FAILED_PRECONDITION",
                f"The disk resource '{disk}' is already being used by '{instance.get('selfLink')}'",
                reason="resourceInUseByAnotherResource",
            )
        if name in self.images.get(project, {}):
            return _error(
                409,
                "ALREADY_EXISTS",
                f"The resource 'projects/{project}/global/images/{name}' already exists",
                reason="alreadyExists",
            )
        size = (instance.get("disks") or [{}])[0].get("initializeParams", {}).get("diskSizeGb", "10")
        self.images.setdefault(project, {})[name] = self._image(
            project, name, body.get("family", ""), disk, int(size)
        )
        op = f"operation-{uuid.uuid4().hex[:12]}-image"
        self.operations[op] = {
            "project": project,
            "global": True,
            "states": ["RUNNING", "DONE"],
            "target": self.images[project][name]["selfLink"],
        }
        return 200, self._global_op(op, "PENDING")

    def _global_poll(self, name: str) -> tuple[int, dict]:
        # globalOperations.get / .wait (compute/docs/reference/rest/v1/globalOperations/wait): the
        # operation, PENDING -> RUNNING -> DONE; wait may return before DONE, so gcloud loops.
        status = self._next_status(name, lambda op: op.get("global"))
        if status is None:
            return self._not_found(f"operations/{name}")
        return 200, self._global_op(name, status)

    def _global_op(self, name: str, status: str) -> dict:
        op = self.operations[name]
        base = f"{self.url}{COMPUTE_PREFIX}projects/{op['project']}/global"
        # Operation resource (compute/docs/reference/rest/v1/globalOperations): no zone field.
        return {
            "kind": "compute#operation",
            "name": name,
            "operationType": "insert",
            "status": status,
            "progress": 100 if status == "DONE" else 0,
            "targetLink": op["target"],
            "selfLink": f"{base}/operations/{name}",
        }

    def _zone_op(self, name: str, status: str) -> dict:
        out = super()._zone_op(name, status)
        out["operationType"] = self.operations[name].get("type", "insert")
        return out
