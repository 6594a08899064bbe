"""Fixtures for the browser tests: one headless chromium per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser

from tests.web.chat import launch_browser


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launch_browser() as b:
        yield b
