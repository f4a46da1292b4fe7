"""Tests of the portfolio-intelligence service."""
