"""`POST /forms/{source}`: the website's form, taken in live for `format: form` sources."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
