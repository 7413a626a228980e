"""The `medsettle.v1.Catalog` service: catalog versions, mappings, matching, policy
versions, institutions and persons (reference data an administrator loads)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from medsettle.v1 import catalog_pb2
from server import recon, reference
from server.common import add_chunk, chunk_hasher
from server.errors import ClientError, field_error
from server.frontend import operators
from server.frontend.services.settlement import Calls, Ctx
from server.rpc import check_parsed
from server.security.passwords import KDF

MAX_IMPORT_ITEMS = 2_000_000
PUT_OPERATORS = "/medsettle.v1.Catalog/PutOperators"


class CatalogService:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    async def ImportCatalog(
        self, request_iterator: AsyncIterator[catalog_pb2.CatalogChunk], context: Ctx
    ) -> bytes:
        first: catalog_pb2.CatalogChunk | None = None
        items: list[catalog_pb2.CatalogItem] = []
        digest = chunk_hasher("ImportCatalog")
        n = 0
        async for chunk in request_iterator:
            check_parsed(chunk)
            if first is None:
                first = chunk
            elif chunk.version and chunk.version != first.version:
                raise field_error(f"messages[{n}].version", "differs from the first message's")
            if len(items) + len(chunk.items) > MAX_IMPORT_ITEMS:
                raise field_error("items", f"more than {MAX_IMPORT_ITEMS} items")
            add_chunk(digest, chunk)
            items.extend(chunk.items)
            n += 1
        if first is None:
            raise field_error("messages", "the stream carried no message")
        version = first.version
        return await self.calls.write(
            "ImportCatalog",
            first,
            lambda conn, caller, now: reference.import_catalog(conn, version, items, now),
            req_hash=digest.digest(),
        )

    async def DownloadCatalog(
        self, request: catalog_pb2.DownloadCatalogRequest, context: Ctx
    ) -> AsyncIterator[catalog_pb2.CatalogChunk]:
        chunks = await self.calls.read(
            "DownloadCatalog",
            request,
            lambda conn, caller: reference.catalog_chunks(
                recon.sqlite_fetch(conn), request.since_version, request.chunk_size
            ),
        )
        for chunk in chunks:
            yield chunk

    async def PutMappings(self, request: catalog_pb2.PutMappingsRequest, context: Ctx) -> bytes:
        return await self.calls.write(
            "PutMappings",
            request,
            lambda conn, caller, now: reference.put_mappings(conn, caller, request),
        )

    async def MatchItems(self, request: catalog_pb2.MatchItemsRequest, context: Ctx) -> Any:
        return await self.calls.read(
            "MatchItems", request, lambda conn, caller: reference.match_items(conn, caller, request)
        )

    async def PutPolicy(self, request: catalog_pb2.PutPolicyRequest, context: Ctx) -> bytes:
        return await self.calls.write(
            "PutPolicy", request, lambda conn, caller, now: reference.put_policy(conn, request, now)
        )

    async def GetPolicy(self, request: catalog_pb2.GetPolicyRequest, context: Ctx) -> Any:
        return await self.calls.read(
            "GetPolicy", request, lambda conn, caller: reference.get_policy(conn, request.version)
        )

    async def PutInstitutions(
        self, request: catalog_pb2.PutInstitutionsRequest, context: Ctx
    ) -> bytes:
        return await self.calls.write(
            "PutInstitutions",
            request,
            lambda conn, caller, now: reference.put_institutions(conn, request),
        )

    async def PutPersons(self, request: catalog_pb2.PutPersonsRequest, context: Ctx) -> bytes:
        return await self.calls.write(
            "PutPersons",
            request,
            lambda conn, caller, now: reference.put_persons(conn, caller.pii, request),
        )

    async def PutOperators(self, request: catalog_pb2.PutOperatorsRequest, context: Ctx) -> bytes:
        """New passwords are hashed (the KDF's slow work) only for a signed-in security
        officer, off the write turn; the request is then recognised and recorded without
        them."""
        await self.calls.read("PutOperators", request, lambda conn, caller: None)
        try:
            operators.check_passwords(request)
        except ClientError as exc:
            await self.calls.auditor.refused(PUT_OPERATORS, request, exc, write=True)
            raise
        hashes = [await KDF.make(o.password) if o.password else "" for o in request.operators]
        cleared = operators.without_passwords(request)
        return await self.calls.write(
            "PutOperators",
            cleared,
            lambda conn, caller, now: operators.put_operators(
                conn, caller.inst.fixmedins_code, cleared, hashes, now
            ),
        )
