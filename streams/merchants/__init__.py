"""Merchants: their options, promotions and catalog, from the merchants file and the catalog
topic."""
