"""Outbound spam scoring: pure logic, no pymilter."""
